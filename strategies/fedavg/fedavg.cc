#include "strategies/fedavg/fedavg.h"

#include <torch/torch.h>

#include "core/model.h"
#include "core/round_strategy.h"
#include "core/tensor_checks.h"
#include "core/training.h"

namespace fedra::fedavg {

void FedAvgOptions::validate() const {
  FEDRA_REQUIRE(rounds_ >= 1, "fedavg.rounds must be >= 1, got {}", rounds_);
  FEDRA_REQUIRE(fraction_ > 0 && fraction_ <= 1, "fedavg.fraction must be in (0, 1], got {}", fraction_);
  FEDRA_REQUIRE(min_workers_ >= 1, "fedavg.min_workers must be >= 1, got {}", min_workers_);
  FEDRA_REQUIRE(min_results_ >= 1, "fedavg.min_results must be >= 1, got {}", min_results_);
  // Both 0 is allowed: no local training, the worker returns the model it received, which
  // measures what Fedra itself costs per round (benchmarks/fedavg_round.py).
  FEDRA_REQUIRE(local_epochs_ >= 0 && local_steps_ >= 0, "fedavg local_epochs and local_steps must be >= 0");
  FEDRA_REQUIRE(batch_size_ >= 1, "fedavg.batch_size must be >= 1, got {}", batch_size_);
  FEDRA_REQUIRE(lr_ > 0, "fedavg.lr must be > 0, got {}", lr_);
  check_optimizer_name(optimizer_);
  FEDRA_REQUIRE(momentum_ >= 0 && momentum_ < 1, "fedavg.momentum must be in [0, 1), got {}", momentum_);
  FEDRA_REQUIRE(weight_decay_ >= 0, "fedavg.weight_decay must be >= 0, got {}", weight_decay_);
  FEDRA_REQUIRE(round_timeout_ > 0, "fedavg.round_timeout must be > 0 seconds, got {}", round_timeout_);
  FEDRA_REQUIRE(eval_every_ >= 0, "fedavg.eval_every must be >= 0, got {}", eval_every_);
}

namespace {

class FedAvgCoordinator : public RoundStrategy {
 public:
  explicit FedAvgCoordinator(const Job& job)
      : job_(job), options_(parse_options<FedAvgOptions>(job.options)) {
    check_loss_name(job.loss);
    model_ = build_model(job.model, job.seed);
    for (auto& [name, t] : model_state(*model_)) global_.emplace_back(name, t.clone());
  }

 protected:
  RoundConfig round_config() const override {
    RoundConfig c;
    c.rounds = options_.rounds();
    c.fraction = options_.fraction();
    c.min_workers = options_.min_workers();
    c.fit_timeout = std::chrono::milliseconds(static_cast<int64_t>(options_.round_timeout() * 1000));
    c.eval_every = options_.eval_every();
    return c;
  }

  bool resumable() const override { return true; }
  NamedTensors checkpoint_state() const override { return global_; }
  void restore(NamedTensors state) override {
    check_layout(global_, state);  // the checkpoint must be of this model
    global_ = std::move(state);
  }

  Message configure_fit(uint32_t round, const WorkerInfo& worker) override {
    Message m(kFit, round);
    m.tensors = global_;  // shared, not copied: the frames reference this memory
    m.options["local_epochs"] = std::to_string(options_.local_epochs());
    m.options["local_steps"] = std::to_string(options_.local_steps());
    m.options["batch_size"] = std::to_string(options_.batch_size());
    m.options["lr"] = format_option_value(options_.lr());
    m.options["optimizer"] = options_.optimizer();
    m.options["momentum"] = format_option_value(options_.momentum());
    m.options["weight_decay"] = format_option_value(options_.weight_decay());
    m.options["seed"] = std::to_string(worker_seed(job_.seed, round, worker.name));
    return m;
  }

  void accumulate_fit(uint32_t round, const WorkerInfo& worker, Message&& result) override {
    FEDRA_REQUIRE(result.kind == kFitResult, "expected '{}' from {}, got '{}'", kFitResult,
                  worker.name, result.kind);
    FEDRA_REQUIRE(result.round == round, "{} answered for round {} in round {}", worker.name,
                  result.round, round);
    const double n = result.metric("num_examples");
    const auto t0 = std::chrono::steady_clock::now();
    try {
      check_layout(global_, result.tensors);
      average_.add(result.tensors, n);
    } catch (const Error& e) {
      FEDRA_FAIL("rejected update from {}: {}", worker.name, e.what());
    }
    accumulate_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    worker_train_s_ = std::max(worker_train_s_, result.metric_or("train_s", 0));
    worker_load_s_ = std::max(worker_load_s_, result.metric_or("load_s", 0));
    loss_sum_ += result.metric_or("train_loss", 0) * n;
    examples_ += static_cast<int64_t>(n);
  }

  Metrics aggregate_fit(uint32_t round, const std::vector<Failure>& failures) override {
    const size_t got = average_.count();
    const double loss = got > 0 ? loss_sum_ / average_.total_weight() : 0;
    const int64_t examples = examples_;
    loss_sum_ = 0;
    examples_ = 0;
    if (static_cast<int64_t>(got) < options_.min_results()) {
      if (got > 0) average_.take_average();  // discard the partial sum
      FEDRA_FAIL("round {}: {} result(s) accepted, min_results is {}{}", round, got,
                 options_.min_results(),
                 failures.empty() ? std::string() : "; failures: " + describe_failures(failures));
    }
    const auto t0 = std::chrono::steady_clock::now();
    NamedTensors previous = std::move(global_);
    global_ = average_.take_average();
    average_.recycle(std::move(previous));
    const double average_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    Metrics m = {{"train_loss", loss},
                 {"train_examples", examples},
                 {"accumulate_s", accumulate_s_},
                 {"average_s", average_s},
                 {"worker_load_s_max", worker_load_s_},
                 {"worker_train_s_max", worker_train_s_}};
    accumulate_s_ = worker_train_s_ = worker_load_s_ = 0;
    return m;
  }

  Metrics evaluate(uint32_t, RunContext& ctx) override {
    if (ctx.test_set == nullptr) return {};
    load_model_state(*model_, global_);
    const EvalStats s = evaluate_model(model_, *ctx.test_set, job_.loss);
    return {{"test_accuracy", s.accuracy}, {"test_loss", s.loss}};
  }

 private:
  Job job_;
  FedAvgOptions options_;
  torch::nn::Sequential model_;
  NamedTensors global_;
  WeightedAverage average_;
  double loss_sum_ = 0;
  int64_t examples_ = 0;
  // Where a round's time goes, reported in metrics.jsonl.
  double accumulate_s_ = 0;
  double worker_load_s_ = 0;
  double worker_train_s_ = 0;
};

class FedAvgWorker : public WorkerStrategy {
 public:
  explicit FedAvgWorker(const Job& job) : job_(job) {
    parse_options<FedAvgOptions>(job.options);
    check_loss_name(job.loss);
    model_ = build_model(job.model, job.seed);
  }

  Message handle(const Message& request, WorkerContext& ctx) override {
    FEDRA_REQUIRE(request.kind == kFit, "fedavg worker cannot handle '{}'", request.kind);
    const auto t0 = std::chrono::steady_clock::now();
    load_model_state(*model_, request.tensors);
    const auto t_loaded = std::chrono::steady_clock::now();
    const OptionMap o("fedavg.fit", request.options);
    TrainOptions t;
    t.epochs = o.get_int("local_epochs", 1);
    t.max_steps = o.get_int("local_steps", 0);
    if (t.max_steps > 0 && t.epochs == 0) t.epochs = std::numeric_limits<int64_t>::max();
    t.batch_size = o.get_int("batch_size", 32);
    t.lr = o.get_double("lr", 0.05);
    t.optimizer = o.get_string("optimizer", "sgd");
    t.momentum = o.get_double("momentum", 0);
    t.weight_decay = o.get_double("weight_decay", 0);
    t.loss = job_.loss;
    t.seed = static_cast<uint64_t>(o.get_int("seed", 1));
    FEDRA_REQUIRE(ctx.data != nullptr && ctx.data->size() > 0, "worker {} has no training data",
                  ctx.name);
    const TrainStats s = train_local(model_, *ctx.data, t);
    const auto t_trained = std::chrono::steady_clock::now();
    Message reply(kFitResult, request.round);
    reply.metrics["load_s"] = std::chrono::duration<double>(t_loaded - t0).count();
    reply.metrics["train_s"] = std::chrono::duration<double>(t_trained - t_loaded).count();
    reply.tensors = model_state(*model_);
    reply.metrics["num_examples"] = static_cast<double>(ctx.data->size());
    reply.metrics["train_loss"] = s.mean_loss;
    reply.metrics["steps"] = static_cast<double>(s.steps);
    reply.metrics["fit_s"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return reply;
  }

 private:
  Job job_;
  torch::nn::Sequential model_;
};

}  // namespace

StrategyInfo fedavg_strategy() {
  StrategyInfo info;
  info.name = "fedavg";
  info.description = "Federated averaging: local epochs on each worker, example-weighted average";
  info.options = option_specs<FedAvgOptions>();
  info.make_coordinator = [](const Job& job) { return std::make_unique<FedAvgCoordinator>(job); };
  info.make_worker = [](const Job& job) { return std::make_unique<FedAvgWorker>(job); };
  return info;
}

}  // namespace fedra::fedavg
