// fedavgm: FedAvg with server momentum (Hsu et al. 2019, "Measuring the Effects of Non-Identical
// Data Distribution for Federated Visual Classification"). Each round the coordinator takes the
// pseudo-gradient d = w - avg (the global model minus the workers' weighted mean), keeps a
// velocity v = beta * v + d, and moves w = w - eta * v (the paper's symbols). With beta 0 and
// eta 1 it is FedAvg exactly. Everything else (sampling, local training, the streaming weighted
// mean, checks, evaluation) is FedAvg's, inherited. Fedra has it built in too
// (--fedavg.server_opt momentum); this plugin shows how such a variant is written.
//
// The momentum is a ServerStep (strategies/fedavg/part.h): its velocity goes into every
// checkpoint (state/load_state), so a resumed run continues it.
#include "fedra/fedavg.h"
#include "fedra/plugin.h"

using namespace fedra;

struct FedAvgMOptions : fedavg::FedAvgOptions {
  FEDRA_ARG(double, eta) = 1.0;
  FEDRA_ARG(double, beta) = 0.9;
  template <class F> void visit(F&& f) {
    FedAvgOptions::visit(f);
    f("eta", eta_, "the coordinator's learning rate on the pseudo-gradient");
    f("beta", beta_, "the coordinator's momentum (0: none)");
  }
  void validate() const {
    FedAvgOptions::validate();
    FEDRA_REQUIRE(eta_ > 0, "fedavgm.eta must be > 0, got {}", eta_);
    FEDRA_REQUIRE(beta_ >= 0 && beta_ < 1, "fedavgm.beta must be in [0, 1), got {}", beta_);
  }
};

struct Momentum : fedavg::ServerStep {
  explicit Momentum(const FedAvgMOptions& o) : o_(o) {}
  std::string name() const override { return "fedavgm's momentum"; }
  void step(const NamedTensors& global, NamedTensors& average) override {
    size_t j = 0;  // the floating tensors' index: counters are taken as averaged, nothing to step
    for (size_t i = 0; i < global.size(); ++i) {
      const at::Tensor& w = global[i].second;
      if (!w.is_floating_point()) continue;
      const at::Tensor d = w - average[i].second;
      if (velocity_.size() <= j) velocity_.emplace_back(global[i].first, d);
      else velocity_[j].second.mul_(o_.beta()).add_(d);
      average[i].second = w - o_.eta() * velocity_[j++].second;
    }
  }
  NamedTensors state() const override {
    NamedTensors s;
    append_prefixed(s, "fedavgm/v/", velocity_);
    return s;
  }
  void load_state(NamedTensors& state) override { velocity_ = take_prefixed(state, "fedavgm/v/"); }
  FedAvgMOptions o_;
  NamedTensors velocity_;  // one per floating tensor of the model, in its order
};

struct FedAvgM : fedavg::FedAvgCoordinator {
  FedAvgM(const Job& job, const FedAvgMOptions& o) : FedAvgCoordinator(job, o) {
    set_server_step(std::make_unique<Momentum>(o));
  }
};

void add_fedavgm(StrategyRegistry& registry) {
  registry.add(fedavg::variant<FedAvgM, FedAvgMOptions>("fedavgm", "FedAvg with server momentum (FedAvgM; plugin)"));
}
FEDRA_PLUGIN(add_fedavgm)
