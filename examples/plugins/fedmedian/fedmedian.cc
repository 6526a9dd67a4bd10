// fedmedian: FedAvg's rounds with the coordinate-wise median of the workers' models instead of
// the weighted mean, so one worker sending huge updates cannot drag the model (Yin et al. 2018).
// For the demonstration, poison=NAME makes that worker add Gaussian noise to what it sends and
// rule=mean keeps FedAvg's mean, to show what the median protects against. (Fedra has the median
// built in too, --fedavg.aggregate median; this plugin shows how such a variant is written.)
//
// The median is a Rule (strategies/fedavg/part.h): the parts that cannot compose with it are
// refused by name (--fedmedian.dp server: DP's guarantee is for the noised mean; --fedmedian.secagg:
// the coordinator would see only the sum), never run around it.
#include <torch/torch.h>

#include "fedra/fedavg.h"
#include "fedra/plugin.h"

using namespace fedra;

enum class Aggregate { kMedian, kMean };
FEDRA_ENUM_NAMES(Aggregate, {Aggregate::kMedian, "median"}, {Aggregate::kMean, "mean"})

struct FedMedianOptions : fedavg::FedAvgOptions {
  FEDRA_ARG(Aggregate, rule) = Aggregate::kMedian;
  FEDRA_ARG(std::string, poison) = "";
  FEDRA_ARG(double, poison_scale) = 1000;
  template <class F> void visit(F&& f) {
    FedAvgOptions::visit(f);
    f("rule", rule_, "median (coordinate-wise) or mean (FedAvg's)");
    f("poison", poison_, "a worker that adds noise to its updates (robustness demo); empty: none");
    f("poison_scale", poison_scale_, "standard deviation of that noise");
  }
};

struct Median : fedavg::Rule {  // holds the round's updates: O(workers x model)
  std::string name() const override { return "median"; }
  void add(const fedavg::Round&, const WorkerInfo&, fedavg::FitRes& update) override {
    held_.push_back(std::move(update.weights));
  }
  NamedTensors aggregate(const fedavg::Round& round) override {
    NamedTensors median = *round.global;
    for (size_t i = 0; i < median.size(); ++i) {
      std::vector<at::Tensor> column;
      for (const auto& r : held_) column.push_back(r[i].second);
      median[i].second = std::get<0>(torch::stack(column).median(0)).contiguous();
    }
    held_.clear();
    return median;
  }
  void discard() override { held_.clear(); }
  std::vector<NamedTensors> held_;
};

struct FedMedian : fedavg::FedAvgCoordinator {
  FedMedian(const Job& job, const FedMedianOptions& o) : FedAvgCoordinator(job, o) {
    if (o.rule() == Aggregate::kMedian) set_rule(std::make_unique<Median>());
  }
};

struct PoisonedWorker : fedavg::FedAvgWorker {  // FedAvg's worker; noisy if it is the one named
  PoisonedWorker(const Job& job, const FedMedianOptions& o) : FedAvgWorker(job), o_(o) {}
  Message handle(const Message& request, WorkerContext& ctx, WorkerLink& link) override {
    Message reply = FedAvgWorker::handle(request, ctx, link);
    for (auto& [name, t] : reply.tensors) {
      if (ctx.name == o_.poison()) t = t + o_.poison_scale() * torch::randn_like(t);
    }
    return reply;
  }
  FedMedianOptions o_;
};

void add_fedmedian(StrategyRegistry& registry) {
  registry.add(fedavg::variant<FedMedian, FedMedianOptions, PoisonedWorker>(
      "fedmedian", "FedAvg rounds with the coordinate-wise median: robust to a poisoned worker (plugin)"));
}
FEDRA_PLUGIN(add_fedmedian)
