// FedAvg's worker half: local training with every part's worker stage around it.
#include <chrono>

#include <torch/torch.h>

#include "core/model/model.h"
#include "core/training/local_trainer.h"
#include "core/training/training.h"
#include "strategies/fedavg/fedavg.h"
#include "strategies/fedavg/parts/parts.h"

namespace fedra::fedavg {

FedAvgWorker::FedAvgWorker(const Job& job) : job_(job), stages_(builtin_worker_stages(job)) {
  check_loss_name(job.loss);
  model_ = build_model(job.model, job.seed);
}

Message FedAvgWorker::handle(const Message& request, WorkerContext& ctx, WorkerLink& link) {
  if (request.kind == kEvaluate) return evaluate(request, ctx);
  return fit(request, ctx, link);
}

Message FedAvgWorker::fit(const Message& request, WorkerContext& ctx, WorkerLink& link) {
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  const FitIns ins = FitIns::decode(request);
  load_model_state(*model_, ins.weights);
  FitRes result;
  LocalFit fit{request, ins, model_, train_options(ins.train, job_.loss, ins.seed), {}, 0, result, ctx};
  for (const auto& s : stages_) s->before(fit);
  const auto t_loaded = Clock::now();
  const LocalOutcome trained = train_on_worker(ctx, request.kind, request.round, model_, fit.train);
  fit.stats = trained.stats;
  fit.train_s = std::chrono::duration<double>(Clock::now() - t_loaded).count();
  result.round = request.round;
  result.weights = model_state(*model_);
  result.num_examples = trained.num_examples;
  result.train_loss = fit.stats.mean_loss;
  result.steps = fit.stats.steps;
  for (const auto& [name, value] : trained.metrics) result.extra[std::string(kFitMetric) + name] = value;
  for (const auto& s : stages_) s->after(fit);
  result.load_s = std::chrono::duration<double>(t_loaded - t0).count();
  result.train_s = std::chrono::duration<double>(Clock::now() - t_loaded).count();
  result.fit_s = result.load_s + result.train_s;
  for (const auto& s : stages_) {
    if (std::optional<Message> reply = s->deliver(fit, link)) return std::move(*reply);
  }
  return result.encode();
}

}  // namespace fedra::fedavg
