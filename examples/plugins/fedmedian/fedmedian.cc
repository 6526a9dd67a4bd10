// fedmedian: FedAvg's rounds with the coordinate-wise median instead of the weighted mean, so
// that one worker sending huge updates cannot drag the model (Yin et al. 2018). A complete
// strategy plugin: options, a coordinator half, a worker half (FedAvg's, reused) and the
// FEDRA_PLUGIN registration.
//
// For the robustness demonstration it can also poison: poison=NAME makes the worker of that
// name add Gaussian noise of standard deviation poison_scale to every weight it sends back; aggregate=mean runs the same rounds with FedAvg's
// example-weighted mean, to show what the poison does without the median.
#include <algorithm>
#include <chrono>
#include <map>

#include <torch/torch.h>

#include "core/model.h"
#include "core/plugin.h"
#include "core/round_strategy.h"
#include "core/tensor_checks.h"
#include "core/training.h"
#include "strategies/fedavg/fedavg.h"

namespace {

using namespace fedra;

struct FedMedianOptions {
  FEDRA_ARG(int64_t, rounds) = 10;
  FEDRA_ARG(int64_t, min_workers) = 1;
  FEDRA_ARG(int64_t, local_epochs) = 1;
  FEDRA_ARG(int64_t, batch_size) = 32;
  FEDRA_ARG(double, lr) = 0.05;
  FEDRA_ARG(double, momentum) = 0.9;
  FEDRA_ARG(double, round_timeout) = 600;
  FEDRA_ARG(std::string, aggregate) = "median";
  FEDRA_ARG(std::string, poison) = "";
  FEDRA_ARG(double, poison_scale) = 1000;

  template <class F>
  void visit(F&& f) {
    f("rounds", rounds_, "rounds of local training and aggregation");
    f("min_workers", min_workers_, "workers a round needs");
    f("local_epochs", local_epochs_, "local epochs per round");
    f("batch_size", batch_size_, "local mini-batch size");
    f("lr", lr_, "local SGD learning rate");
    f("momentum", momentum_, "local SGD momentum");
    f("round_timeout", round_timeout_, "seconds a round waits for results");
    f("aggregate", aggregate_, "median (coordinate-wise) or mean (FedAvg's example-weighted mean)");
    f("poison", poison_, "name of a worker that sends huge updates (robustness tests); empty: none");
    f("poison_scale", poison_scale_, "standard deviation of the noise the poisoned worker adds");
  }
  void validate() const {
    FEDRA_REQUIRE(rounds_ >= 1, "fedmedian.rounds must be >= 1, got {}", rounds_);
    FEDRA_REQUIRE(aggregate_ == "median" || aggregate_ == "mean",
                  "fedmedian.aggregate must be median or mean, got '{}'", aggregate_);
  }
};

class FedMedianCoordinator : public RoundStrategy {
 public:
  explicit FedMedianCoordinator(const Job& job) : job_(job), o_(parse_options<FedMedianOptions>(job.options)) {
    model_ = build_model(job.model, job.seed);
    for (auto& [name, t] : model_state(*model_)) global_.emplace_back(name, t.clone());
  }

 protected:
  RoundConfig round_config() const override {
    RoundConfig c;
    c.rounds = o_.rounds();
    c.min_workers = o_.min_workers();
    c.fit_timeout = std::chrono::milliseconds(static_cast<int64_t>(o_.round_timeout() * 1000));
    return c;
  }

  Message configure_fit(uint32_t round, const WorkerInfo& worker) override {
    Message m(fedavg::kFit, round);  // FedAvg's worker half does the local training
    m.tensors = global_;
    m.options["local_epochs"] = std::to_string(o_.local_epochs());
    m.options["local_steps"] = "0";
    m.options["batch_size"] = std::to_string(o_.batch_size());
    m.options["lr"] = format_option_value(o_.lr());
    m.options["optimizer"] = "sgd";
    m.options["momentum"] = format_option_value(o_.momentum());
    m.options["weight_decay"] = "0";
    m.options["seed"] = std::to_string(worker_seed(job_.seed, round, worker.name));
    return m;
  }

  void accumulate_fit(uint32_t, const WorkerInfo& worker, Message&& result) override {
    FEDRA_REQUIRE(result.kind == fedavg::kFitResult, "expected '{}' from {}, got '{}'", fedavg::kFitResult,
                  worker.name, result.kind);
    check_layout(global_, result.tensors);
    check_finite(result.tensors);
    weights_.push_back(result.metric("num_examples"));
    results_.push_back(std::move(result.tensors));  // the median needs them all: O(workers x model)
  }

  Metrics aggregate_fit(uint32_t round, const std::vector<Failure>& failures) override {
    FEDRA_REQUIRE(!results_.empty(), "round {}: no results ({})", round, describe_failures(failures));
    NamedTensors next;
    for (size_t i = 0; i < global_.size(); ++i) {
      std::vector<at::Tensor> column;
      for (const auto& r : results_) column.push_back(r[i].second.to(torch::kDouble));
      at::Tensor stacked = torch::stack(column);
      at::Tensor agg;
      if (o_.aggregate() == "median") {
        agg = std::get<0>(stacked.median(0));
      } else {
        const at::Tensor w = torch::tensor(weights_, torch::kDouble);
        std::vector<int64_t> shape(static_cast<size_t>(stacked.dim()), 1);
        shape[0] = static_cast<int64_t>(weights_.size());
        agg = (stacked * w.view(shape)).sum(0) / w.sum();
      }
      next.emplace_back(global_[i].first, agg.to(global_[i].second.scalar_type()).contiguous());
    }
    global_ = std::move(next);
    const auto n = static_cast<int64_t>(results_.size());
    results_.clear();
    weights_.clear();
    return {{"aggregated", n}, {"aggregate", o_.aggregate()}};
  }

  Metrics evaluate(uint32_t, RunContext& ctx) override {
    if (ctx.test_set == nullptr) return {};
    load_model_state(*model_, global_);
    const EvalStats s = evaluate_model(model_, *ctx.test_set, job_.loss);
    return {{"test_accuracy", s.accuracy}, {"test_loss", s.loss}};
  }

 private:
  Job job_;
  FedMedianOptions o_;
  torch::nn::Sequential model_{nullptr};
  NamedTensors global_;
  std::vector<NamedTensors> results_;
  std::vector<double> weights_;
};

// FedAvg's worker half, handed FedAvg's options, plus the optional poison.
class FedMedianWorker : public WorkerStrategy {
 public:
  explicit FedMedianWorker(const Job& job) : o_(parse_options<FedMedianOptions>(job.options)) {
    Job inner = job;
    inner.options = OptionMap("fedavg");
    inner_ = fedavg::fedavg_strategy().make_worker(inner);
  }

  Message handle(const Message& request, WorkerContext& ctx) override {
    Message reply = inner_->handle(request, ctx);
    if (!o_.poison().empty() && ctx.name == o_.poison()) {
      for (auto& [name, t] : reply.tensors) t = t + o_.poison_scale() * torch::randn_like(t);
    }
    return reply;
  }

 private:
  FedMedianOptions o_;
  std::unique_ptr<WorkerStrategy> inner_;
};

void add_fedmedian(StrategyRegistry& registry) {
  StrategyInfo info;
  info.name = "fedmedian";
  info.description = "FedAvg rounds with the coordinate-wise median: robust to a poisoned worker (plugin)";
  info.options = option_specs<FedMedianOptions>();
  info.make_coordinator = [](const Job& job) { return std::make_unique<FedMedianCoordinator>(job); };
  info.make_worker = [](const Job& job) { return std::make_unique<FedMedianWorker>(job); };
  registry.add(std::move(info));
}

}  // namespace

FEDRA_PLUGIN(add_fedmedian)
