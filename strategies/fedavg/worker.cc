// FedAvg's worker half.
#include <chrono>
#include <limits>

#include <torch/torch.h>

#include "core/model.h"
#include "core/training.h"
#include "strategies/fedavg/fedavg.h"

namespace fedra::fedavg {

FedAvgWorker::FedAvgWorker(const Job& job) : job_(job) {
  check_loss_name(job.loss);
  model_ = build_model(job.model, job.seed);
}

// Tests only (FedAvgTesting): corrupts the trained weights as the coordinator asked.
void FedAvgWorker::attack(const FitIns& ins, NamedTensors& weights) const {
  torch::NoGradGuard no_grad;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(ins.seed ^ 0x5eedULL);
  for (size_t i = 0; i < weights.size(); ++i) {
    at::Tensor& w = weights[i].second;
    if (!w.is_floating_point()) continue;
    const at::Tensor& g = ins.weights[i].second;
    switch (ins.attack) {
      case Attack::kSignFlip: w = g - ins.attack_scale * (w - g); break;
      case Attack::kScale: w = g + ins.attack_scale * (w - g); break;
      case Attack::kNoise: w = w + ins.attack_scale * at::randn(w.sizes(), gen, w.options()); break;
      case Attack::kNone: break;
    }
  }
}

Message FedAvgWorker::handle(const Message& request, WorkerContext& ctx, WorkerLink&) {
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  const FitIns ins = FitIns::decode(request);
  load_model_state(*model_, ins.weights);
  const auto t_loaded = Clock::now();
  TrainOptions t;
  t.epochs = ins.local_epochs;
  t.max_steps = ins.local_steps;
  if (t.max_steps > 0 && t.epochs == 0) t.epochs = std::numeric_limits<int64_t>::max();
  t.batch_size = ins.batch_size;
  t.optim = OptimizerConfig::from(ins.optim);
  t.proximal_mu = ins.proximal_mu;
  t.loss = job_.loss;
  t.seed = ins.seed;
  FEDRA_REQUIRE(ctx.data != nullptr && ctx.data->size() > 0, "worker {} has no training data", ctx.name);
  const TrainStats s = train_local(model_, *ctx.data, t);
  const auto t_trained = Clock::now();
  FitRes res;
  res.round = request.round;
  res.weights = model_state(*model_);
  if (ins.attack != Attack::kNone) attack(ins, res.weights);
  res.num_examples = ctx.data->size();
  res.train_loss = s.mean_loss;
  res.steps = s.steps;
  res.load_s = std::chrono::duration<double>(t_loaded - t0).count();
  res.train_s = std::chrono::duration<double>(t_trained - t_loaded).count();
  res.fit_s = std::chrono::duration<double>(Clock::now() - t0).count();
  return res.encode();
}

}  // namespace fedra::fedavg
