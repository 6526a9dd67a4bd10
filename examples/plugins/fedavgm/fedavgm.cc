// fedavgm: FedAvg with server momentum (Hsu et al. 2019, "Measuring the Effects of Non-Identical
// Data Distribution for Federated Visual Classification"). Each round the coordinator takes the
// pseudo-gradient d = w - avg (the global model minus the workers' weighted mean), keeps a
// velocity v = beta * v + d, and moves w = w - eta * v (the paper's symbols). With beta 0 and
// eta 1 it is FedAvg exactly. Everything else (sampling, local training, the streaming weighted
// mean, checks, evaluation) is FedAvg's, inherited. Fedra has it built in too
// (--fedavg.server_opt momentum); this plugin shows how such a variant is written.
#include "core/kit/plugin.h"
#include "strategies/fedavg/fedavg.h"

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

struct FedAvgM : fedavg::FedAvgCoordinator {
  FedAvgM(const Job& job, const FedAvgMOptions& o) : FedAvgCoordinator(job, o), o_(o) {}
  void server_update(uint32_t, NamedTensors average) override {
    NamedTensors next = global();
    for (size_t i = 0; i < next.size(); ++i) {
      const at::Tensor& w = next[i].second;
      if (!w.is_floating_point()) {  // counters: taken as averaged, nothing to step
        next[i].second = average[i].second;
        continue;
      }
      const at::Tensor d = w - average[i].second;
      if (velocity_.size() <= i) velocity_.push_back(d);
      else velocity_[i].mul_(o_.beta()).add_(d);
      next[i].second = w - o_.eta() * velocity_[i];
    }
    set_global(std::move(next));
  }
  FedAvgMOptions o_;
  std::vector<at::Tensor> velocity_;  // one per tensor of the model
};

void add_fedavgm(StrategyRegistry& registry) {
  registry.add(fedavg::variant<FedAvgM, FedAvgMOptions>("fedavgm", "FedAvg with server momentum (FedAvgM; plugin)"));
}
FEDRA_PLUGIN(add_fedavgm)
