// Byzantine workers, for robustness tests and benchmarks (--fedavg.testing.byzantine, attack,
// attack_scale): the coordinator tells the named workers to corrupt what they send (fields
// testing.attack and testing.attack_scale of fedavg.fit), and they do, after every other part.
#include <torch/torch.h>

#include "strategies/fedavg/fedavg.h"
#include "strategies/fedavg/parts/parts.h"

namespace fedra::fedavg {

namespace {

constexpr const char* kAttack = "testing.attack";
constexpr const char* kScale = "testing.attack_scale";

class AttackStage : public Stage {
 public:
  explicit AttackStage(FedAvgTesting o) : o_(std::move(o)) {}
  std::string name() const override { return "testing.byzantine"; }
  void configure(const Round&, const WorkerInfo& worker, Message& fit) override {
    if (!o_.names(worker.name)) return;
    fit.options[kAttack] = enum_name(o_.attack());
    fit.options[kScale] = fmt::format("{:.17g}", o_.attack_scale());
  }

 private:
  FedAvgTesting o_;
};

// With u = w - global: sign_flip sends global - s u, scale sends global + s u, noise sends
// w + s N(0, 1) (seeded by the round's seed).
class AttackWorkerStage : public WorkerStage {
 public:
  void after(LocalFit& fit) override {
    if (!fit.request.options.count(kAttack)) return;
    const OptionMap o(kFit, fit.request.options);
    const Attack attack = o.get_enum<Attack>(kAttack, Attack::kNone);
    const double s = o.get_double(kScale, 0);
    torch::NoGradGuard no_grad;
    auto gen = at::make_generator<at::CPUGeneratorImpl>(fit.ins.seed ^ 0x5eedULL);
    NamedTensors& weights = fit.result.weights;
    for (size_t i = 0; i < weights.size(); ++i) {
      at::Tensor& w = weights[i].second;
      if (!w.is_floating_point()) continue;
      const at::Tensor& g = fit.ins.weights[i].second;
      switch (attack) {
        case Attack::kSignFlip: w = g - s * (w - g); break;
        case Attack::kScale: w = g + s * (w - g); break;
        case Attack::kNoise: w = w + s * at::randn(w.sizes(), gen, w.options()); break;
        case Attack::kNone: break;
      }
    }
  }
};

}  // namespace

std::unique_ptr<Stage> attack_stage(const FedAvgOptions& o) {
  return o.testing().byzantine().empty() ? nullptr : std::make_unique<AttackStage>(o.testing());
}

std::unique_ptr<WorkerStage> attack_worker_stage() { return std::make_unique<AttackWorkerStage>(); }

}  // namespace fedra::fedavg
