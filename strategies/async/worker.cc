// The asynchronous strategies' worker half: one session per run, one update per "async.train".
#include <chrono>
#include <cstdlib>
#include <limits>

#include <spdlog/spdlog.h>

#include <torch/torch.h>

#include "core/model/model.h"
#include "core/training/optimizer.h"
#include "core/training/training.h"
#include "strategies/async/internal.h"

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
    FEDRA_REQUIRE(ctx.data != nullptr && ctx.data->size() > 0, "worker {} has no training data", ctx.name);
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
  Message train(const Message& ins, WorkerContext& ctx) {
    using Clock = std::chrono::steady_clock;
    const auto t0 = Clock::now();
    ++updates_;
    if (!exit_name_.empty() && exit_name_ == ctx.name && updates_ == exit_at_) {
      spdlog::warn("testing.exit_after: {} exits during its update {}", ctx.name, updates_);
      std::_Exit(3);
    }
    load_model_state(*model_, ins.tensors);
    TrainOptions t;
    t.epochs = o_.local_epochs() > 0 ? o_.local_epochs() : std::numeric_limits<int64_t>::max();
    t.max_steps = o_.local_steps();
    t.batch_size = o_.batch_size();
    t.optim = OptimizerConfig::from(o_.optim());
    t.proximal_mu = o_.proximal_mu();
    t.loss = job_.loss;
    t.seed = static_cast<uint64_t>(std::stoull(ins.option("seed")));
    const TrainStats s = train_local(model_, *ctx.data, t);
    const double train_s = std::chrono::duration<double>(Clock::now() - t0).count();
    // Wall clock: this device is `slowdown` times slower and its link takes net_s (core/federated/fleet.h).
    const double sleep_s = sleep_as_device(ins.metric_or("sleep_factor", 0), train_s, ins.metric_or("net_s", 0));
    Message update(kUpdate, ins.round);
    NamedTensors weights = model_state(*model_);
    if (o_.mode == Mode::kFedBuff) {
      torch::NoGradGuard no_grad;
      for (size_t i = 0; i < weights.size(); ++i) {
        at::Tensor& w = weights[i].second;
        if (w.is_floating_point()) w = w - ins.tensors[i].second;  // the delta from the model received
      }
    }
    update.tensors = std::move(weights);
    update.metrics["num_examples"] = static_cast<double>(ctx.data->size());
    update.metrics["train_loss"] = s.mean_loss;
    update.metrics["steps"] = static_cast<double>(s.steps);
    update.metrics["train_s"] = train_s;
    update.metrics["slept_s"] = sleep_s;
    return update;
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
