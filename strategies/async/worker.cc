// The asynchronous strategies' worker half: one session per run, one update per "async.train".
#include <chrono>
#include <cstdlib>

#include <spdlog/spdlog.h>

#include <torch/torch.h>

#include "core/model/model.h"
#include "core/training/optimizer.h"
#include "core/training/local_trainer.h"
#include "core/training/training.h"
#include "strategies/async/internal.h"
#include "strategies/async/messages.h"

namespace fedra::async {

namespace {

class AsyncWorker : public WorkerStrategy {
 public:
  AsyncWorker(const Job& job, AsyncOptions options) : job_(job), o_(std::move(options)) {
    check_loss_name(job.loss);
    model_ = build_model(job.model, job.seed);
    const std::string exit_after = o_.testing().exit_after();
    const auto colon = exit_after.rfind(':');
    if (colon != std::string::npos) {
      exit_name_ = exit_after.substr(0, colon);
      exit_at_ = std::stoll(exit_after.substr(colon + 1));
    }
  }

  Message handle(const Message& request, WorkerContext& ctx, WorkerLink& link) override {
    request.expect_kind(kSession, "the coordinator");
    // A client may sit idle for long (concurrency below the fleet's size): the session waits for
    // as long as the coordinator's connection lives.
    const auto idle = std::chrono::hours(24 * 30);
    Message next = request.tensors.empty() ? link.receive(idle) : request;
    while (next.kind != kStop) {
      if (next.kind != kSession) next.expect_kind(kTrain, "the coordinator");
      link.send(train(next, ctx));
      next = link.receive(idle);
    }
    return Message(kDone);
  }

 private:
  Message train(const Message& request, WorkerContext& ctx) {
    using Clock = std::chrono::steady_clock;
    const auto t0 = Clock::now();
    const Dispatch ins = Dispatch::decode(request);
    ++updates_;
    if (!exit_name_.empty() && exit_name_ == ctx.name && updates_ == exit_at_) {
      spdlog::warn("testing.exit_after: {} exits during its update {}", ctx.name, updates_);
      std::_Exit(3);
    }
    load_model_state(*model_, ins.weights);
    const LocalOutcome trained =
        train_on_worker(ctx, kTrain, request.round, model_, train_options(o_.local(), job_.loss, ins.seed));
    const TrainStats& s = trained.stats;
    const double train_s = std::chrono::duration<double>(Clock::now() - t0).count();
    Update update;
    update.version = ins.version;
    // Wall clock: this device is `slowdown` times slower and its link takes net_s (core/federated/fleet.h).
    update.slept_s = sleep_as_device(ins.sleep_factor, train_s, ins.net_s);
    update.tensors = model_state(*model_);
    if (o_.mode == Mode::kFedBuff) {
      torch::NoGradGuard no_grad;
      for (size_t i = 0; i < update.tensors.size(); ++i) {
        at::Tensor& w = update.tensors[i].second;
        if (w.is_floating_point()) w = w - ins.weights[i].second;  // the delta from the model received
      }
    }
    update.num_examples = static_cast<double>(trained.num_examples);
    update.train_loss = s.mean_loss;
    update.steps = static_cast<double>(s.steps);
    update.train_s = train_s;
    return update.encode();
  }

  Job job_;
  AsyncOptions o_;
  torch::nn::Sequential model_{nullptr};
  int64_t updates_ = 0;
  std::string exit_name_;
  int64_t exit_at_ = -1;
};

}  // namespace

std::unique_ptr<WorkerStrategy> make_worker(const Job& job, const AsyncOptions& options) {
  return std::make_unique<AsyncWorker>(job, options);
}

}  // namespace fedra::async
