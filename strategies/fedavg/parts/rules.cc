// The options' rules and server step, and norm clipping: FedAvg's weighted mean, the robust rules
// that hold a round's updates (core/federated/robust_aggregation.h), the server optimisers
// (core/federated/server_optimizer.h), clip_norm.
#include <torch/torch.h>

#include "core/federated/aggregation.h"
#include "strategies/fedavg/fedavg.h"
#include "strategies/fedavg/parts/parts.h"

namespace fedra::fedavg {

namespace {

// The example-weighted mean, streaming: O(model) memory however many updates (core/federated/
// aggregation.h). Linear, so secure aggregation can compute it from the sum.
class MeanRule : public Rule {
 public:
  std::string name() const override { return "mean"; }
  bool linear() const override { return true; }
  void add(const Round&, const WorkerInfo& worker, FitRes& update) override {
    try {
      average_.add(update.weights, static_cast<double>(update.num_examples), /*verified=*/true);
    } catch (const Error& e) {
      FEDRA_FAIL("rejected update from {}: {}", worker.name, e.what());
    }
  }
  void add_sum(const Round&, NamedTensors weighted_sum, double weight_sum, size_t) override {
    sum_ = std::move(weighted_sum);
    sum_weight_ = weight_sum;
  }
  NamedTensors aggregate(const Round& round) override {
    if (!sum_.empty()) return global_plus(*round.global, take_sum(), sum_weight_);
    return average_.take_average();
  }
  void discard() override {
    if (average_.count() > 0) average_.take_average();  // drops the partial sum
    sum_.clear();
  }
  void recycle(NamedTensors previous) override { average_.recycle(std::move(previous)); }

  // global + sum / denominator over the float tensors; integer buffers (batch counts) are kept.
  static NamedTensors global_plus(const NamedTensors& global, const NamedTensors& sum, double denominator) {
    NamedTensors next;
    size_t j = 0;
    for (const auto& [name, g] : global) {
      if (g.is_floating_point()) {
        next.emplace_back(name, (g.to(at::kDouble) + sum[j++].second / denominator).to(g.scalar_type()));
      } else {
        next.emplace_back(name, g.clone());
      }
    }
    return next;
  }

 private:
  NamedTensors take_sum() {
    NamedTensors out = std::move(sum_);
    sum_.clear();
    return out;
  }
  WeightedAverage average_;
  NamedTensors sum_;  // secure aggregation's weighted sum of the updates
  double sum_weight_ = 0;
};

// A robust rule over the round's held updates (unweighted, O(updates x model) memory, bounded by
// hold_budget_mb: a round whose sampled updates would not fit asks nobody).
class HeldRule : public Rule {
 public:
  explicit HeldRule(RobustOptions o) : o_(std::move(o)) {}
  std::string name() const override { return enum_name(o_.aggregate()); }
  std::string admits(const Round& round, size_t workers) const override {
    const auto model_bytes = static_cast<double>(round.model_bytes);
    const double need = model_bytes * static_cast<double>(workers);
    if (need <= o_.hold_budget_mb() * 1e6) return "";
    return fmt::format(
        "round {}: aggregate={} holds every update, and {} updates of {:.1f} MB need {:.1f} MB, over "
        "fedavg.hold_budget_mb = {}; raise the budget, sample fewer workers (fraction) or use aggregate=mean",
        round.number, enum_name(o_.aggregate()), workers, model_bytes / 1e6, need / 1e6, o_.hold_budget_mb());
  }
  void add(const Round&, const WorkerInfo&, FitRes& update) override {
    held_.push_back(std::move(update.weights));  // may reference the received frame: no copy
  }
  NamedTensors aggregate(const Round&) override {
    std::vector<NamedTensors> held = std::move(held_);
    held_.clear();
    return robust_aggregate(o_, held);
  }
  void discard() override { held_.clear(); }

 private:
  RobustOptions o_;
  std::vector<NamedTensors> held_;
};

class ServerOptimizerStep : public ServerStep {
 public:
  explicit ServerOptimizerStep(ServerOptOptions o) : name_(enum_name(o.server_opt())), opt_(std::move(o)) {}
  std::string name() const override { return "server_opt=" + name_; }
  void step(const NamedTensors& global, NamedTensors& aggregate) override { opt_.step(global, aggregate); }
  NamedTensors state() const override { return opt_.state(); }
  void load_state(NamedTensors& state) override {
    NamedTensors mine;
    NamedTensors rest;
    for (auto& [name, t] : state) (ServerOptimizer::is_state(name) ? mine : rest).emplace_back(name, std::move(t));
    state = std::move(rest);
    opt_.load_state(mine);
  }

 private:
  std::string name_;
  ServerOptimizer opt_;
};

// clip_norm: each update u = w - global scaled down to L2 norm C, before any rule.
class ClipStage : public Stage {
 public:
  explicit ClipStage(double c) : c_(c) {}
  std::string name() const override { return "clip_norm"; }
  std::string needs_each_update() const override { return "it scales each update down to its norm"; }
  void check(const Round& round, const WorkerInfo&, FitRes& update) override {
    clip_to_norm(*round.global, update.weights, c_);
  }

 private:
  double c_;
};

}  // namespace

NamedTensors linear_aggregate(const NamedTensors& global, const NamedTensors& weighted_sum, double denominator) {
  return MeanRule::global_plus(global, weighted_sum, denominator);
}

std::unique_ptr<Rule> options_rule(const FedAvgOptions& o) {
  if (o.robust().holds_updates()) return std::make_unique<HeldRule>(o.robust());
  return std::make_unique<MeanRule>();
}

std::unique_ptr<ServerStep> options_server_step(const FedAvgOptions& o) {
  return std::make_unique<ServerOptimizerStep>(o.server());
}

std::unique_ptr<Stage> clip_stage(const FedAvgOptions& o) {
  return o.robust().clip_norm() > 0 ? std::make_unique<ClipStage>(o.robust().clip_norm()) : nullptr;
}

}  // namespace fedra::fedavg
