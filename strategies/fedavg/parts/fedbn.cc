// FedBN (Li et al. 2021): each worker keeps its batch norm layers' weights and running statistics
// across rounds instead of taking the global ones ("local_bn" = "true" in fedavg.fit). The
// coordinator still averages them into its own model, which it evaluates and saves.
#include <set>

#include <torch/torch.h>

#include "core/model/script_model.h"
#include "core/model/state.h"
#include "strategies/fedavg/fedavg.h"
#include "strategies/fedavg/parts/parts.h"

namespace fedra::fedavg {

namespace {

constexpr const char* kOption = "local_bn";

class FedBnStage : public Stage {
 public:
  std::string name() const override { return "local_bn"; }
  void start(const Job& job, const NamedTensors&, const torch::nn::Sequential& model) override {
    FEDRA_REQUIRE(!batchnorm_tensor_names(*model).empty(),
                  "fedavg.local_bn keeps batch norm layers local, and model '{}' has none", job.model);
  }
  void configure(const Round&, const WorkerInfo&, Message& fit) override { fit.options[kOption] = "true"; }
};

class FedBnWorkerStage : public WorkerStage {
 public:
  void before(LocalFit& fit) override {
    if (!fit.request.options.count(kOption)) return;
    if (bn_.empty()) {  // the first round: the global ones; from now on, this worker's own
      const auto names = batchnorm_tensor_names(*fit.model);
      const std::set<std::string> wanted(names.begin(), names.end());
      for (const auto& [name, t] : model_state(*fit.model)) {
        if (wanted.count(name)) bn_.emplace_back(name, t);
      }
      return;
    }
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < bn_.size(); ++i) bn_[i].second.copy_(local_[i]);
  }
  void after(LocalFit& fit) override {
    if (!fit.request.options.count(kOption)) return;
    // The next round starts from these batch norm tensors, whatever the global ones are.
    local_.clear();
    for (const auto& bn : bn_) local_.push_back(bn.second.clone());
  }

 private:
  NamedTensors bn_;                 // the model's batch norm tensors (its own storage)
  std::vector<at::Tensor> local_;   // copies of them after this worker's last round
};

}  // namespace

std::unique_ptr<Stage> fedbn_stage(const FedAvgOptions& o) {
  return o.local_bn() ? std::make_unique<FedBnStage>() : nullptr;
}

std::unique_ptr<WorkerStage> fedbn_worker_stage() { return std::make_unique<FedBnWorkerStage>(); }

}  // namespace fedra::fedavg
