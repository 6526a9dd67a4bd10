// SCAFFOLD (Karimireddy et al. 2020): control variates correct each local step for client drift.
//
// The coordinator keeps c (one tensor per parameter) and sends it beside the model ("scaffold" =
// "true", tensors "scaffold.c/NAME"); the worker keeps its own c_i across rounds, adds c - c_i to
// every local gradient, and afterwards (option II) sets c_i+ = c_i - c + (x - y) / (K lr), x the
// model it received, y the trained one, K its steps, returning delta c_i = c_i+ - c_i
// ("scaffold.dc/NAME"). The coordinator adds the round's deltas: c <- c + (1/N) sum delta c_i,
// N the workers connected when the round began. Option II holds for plain SGD only, which the
// options' check demands.
#include <torch/torch.h>

#include "core/data/tensor_checks.h"
#include "strategies/fedavg/fedavg.h"
#include "strategies/fedavg/parts/parts.h"
#include "strategies/run_message.h"

namespace fedra::fedavg {

namespace {

constexpr const char* kOption = "scaffold";
constexpr const char* kControl = "scaffold.c/";         // fedavg.fit: the server's c
constexpr const char* kDelta = "scaffold.dc/";          // fedavg.fit_result: the worker's delta c_i
constexpr const char* kCheckpoint = "scaffold/c/";      // the checkpoint's c

NamedTensors zeros_like_parameters(const torch::nn::Sequential& model) {
  NamedTensors out;
  for (const auto& p : model->named_parameters()) out.emplace_back(p.key(), torch::zeros_like(p.value()));
  return out;
}

class ScaffoldStage : public Stage {
 public:
  std::string name() const override { return "scaffold"; }
  std::string needs_each_update() const override {
    return "SCAFFOLD's control variates are not securely summed (yet)";
  }
  void start(const Job&, const NamedTensors&, const torch::nn::Sequential& model) override {
    if (control_.empty()) control_ = zeros_like_parameters(model);
  }
  void configure(const Round&, const WorkerInfo&, Message& fit) override {
    fit.options[kOption] = "true";
    append_prefixed(fit.tensors, kControl, control_);  // shared, not copied
  }
  // The worker's delta c_i must fit the control variate (a bad one rejects the update too); it
  // joins the round's sum only once the update itself was taken.
  void check(const Round&, const WorkerInfo& worker, FitRes& update) override {
    delta_ = take_prefixed(update.side, kDelta);
    try {
      FEDRA_REQUIRE(!delta_.empty(), "it sent no SCAFFOLD control variate (scaffold.dc/...) though asked to");
      check_layout(control_, delta_);
      check_finite(delta_);
    } catch (const Error& e) {
      FEDRA_FAIL("rejected update from {}: {}", worker.name, e.what());
    }
  }
  void accepted(const Round&, const WorkerInfo&, const FitRes&) override {
    if (sum_.empty()) {
      for (const auto& [name, d] : delta_) sum_.emplace_back(name, d.to(at::kDouble));
    } else {
      for (size_t i = 0; i < delta_.size(); ++i) sum_[i].second.add_(delta_[i].second);
    }
    delta_.clear();
  }
  void discard() override { sum_.clear(); }
  void updated(const Round& round, const NamedTensors&) override {
    if (sum_.empty()) return;
    // c <- c + (1/N) sum over the round's workers of delta c_i (Karimireddy et al., Algorithm 1).
    const double n = static_cast<double>(std::max<size_t>(round.connected, round.accepted));
    for (size_t i = 0; i < control_.size(); ++i) {
      control_[i].second = (control_[i].second + sum_[i].second / n).to(control_[i].second.scalar_type());
    }
    sum_.clear();
  }
  void save(NamedTensors& state) const override {
    for (const auto& [name, c] : control_) state.emplace_back(kCheckpoint + name, c);
  }
  void load(NamedTensors& state) override {
    NamedTensors control = take_prefixed(state, kCheckpoint);
    FEDRA_REQUIRE(!control.empty(), "the checkpoint has no SCAFFOLD control variate: it was written without "
                  "fedavg.scaffold; resume with the options of the first run");
    check_layout(control_, control);
    control_ = std::move(control);
  }

 private:
  NamedTensors control_;  // c
  NamedTensors sum_;      // this round's sum of the workers' delta c (float64)
  NamedTensors delta_;    // the update being taken
};

class ScaffoldWorkerStage : public WorkerStage {
 public:
  void before(LocalFit& fit) override {
    NamedTensors c = server_control(fit.request);
    if (c.empty()) return;
    if (control_.empty()) control_ = zeros_like_parameters(fit.model);
    check_layout(control_, c);
    for (size_t i = 0; i < control_.size(); ++i) fit.train.grad_correction.push_back(c[i].second - control_[i].second);
  }
  void after(LocalFit& fit) override {
    const NamedTensors c = server_control(fit.request);
    if (c.empty()) return;
    NamedTensors delta;
    if (fit.stats.steps == 0) {
      for (const auto& [name, ci] : control_) delta.emplace_back(name, torch::zeros_like(ci));
    } else {
      // Option II: c_i+ = c_i - c + (x - y) / (K lr), x the global model, y the trained one, K steps.
      torch::NoGradGuard no_grad;
      const double scale = 1.0 / (static_cast<double>(fit.stats.steps) * fit.train.optim.lr);
      std::map<std::string, const at::Tensor*> global;
      for (const auto& [name, x] : fit.ins.weights) global[name] = &x;
      const auto trained = fit.model->named_parameters();
      for (size_t i = 0; i < control_.size(); ++i) {
        const std::string& name = control_[i].first;
        const at::Tensor next = control_[i].second - c[i].second + (*global.at(name) - trained[name]) * scale;
        delta.emplace_back(name, next - control_[i].second);
        control_[i].second = next;
      }
    }
    append_prefixed(fit.result.side, kDelta, delta);
  }

 private:
  // The fit's c, checked against its option; empty when SCAFFOLD is off.
  static NamedTensors server_control(const Message& request) {
    NamedTensors all = request.tensors;
    NamedTensors c = take_prefixed(all, kControl);
    const bool on = request.options.count(kOption) != 0;
    FEDRA_REQUIRE(on || c.empty(), "'{}' carries control variates without the option 'scaffold'", kFit);
    FEDRA_REQUIRE(!on || !c.empty(), "'{}' asks for scaffold without control variates", kFit);
    return c;
  }
  NamedTensors control_;  // c_i, kept across rounds (zero at first)
};

}  // namespace

std::unique_ptr<Stage> scaffold_stage(const FedAvgOptions& o) {
  return o.scaffold() ? std::make_unique<ScaffoldStage>() : nullptr;
}

std::unique_ptr<WorkerStage> scaffold_worker_stage() { return std::make_unique<ScaffoldWorkerStage>(); }

}  // namespace fedra::fedavg
