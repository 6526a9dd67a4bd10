// What split learning's two halves share: a part of the network with its optimiser, the
// weights relayed between them, backward through a possibly stale forward, and the factories of
// the halves (coordinator.cc, worker.cc).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include <torch/torch.h>

#include "core/kit/message.h"
#include "core/kit/strategy.h"
#include "core/training/optimizer.h"
#include "strategies/split/split.h"

namespace fedra::split {




// One part of the network with its own optimiser.
struct Part {
  torch::nn::Sequential net{nullptr};
  std::optional<ModuleOptimizer> opt;

  void init(torch::nn::Sequential n, const OptimizerConfig& config) {
    net = std::move(n);
    opt.emplace(*net, config);
  }
  void zero_grad() { opt->zero_grad(); }
  void step() { opt->step(); }
  uint64_t updates() const { return opt->updates(); }
};

// The entries of `state` that `module` has, in the module's order.
NamedTensors state_for(const NamedTensors& state, const torch::nn::Module& module);
NamedTensors clone_state(const NamedTensors& state);
double tensor_bytes(const at::Tensor& t);

// Backpropagates `grad` through a saved forward pass. If the part's weights changed since that
// forward (pipelining) and autograd refuses the graph because a tensor it saved was updated in
// place, redoes the forward with `recompute()` (at the current weights) and backpropagates that.
// Returns true if it had to recompute. An intact graph (e.g. a part whose only weighted layer
// reads the raw input saves no weights) gives the gradient at the weights the forward used.
template <class Recompute>
bool backward_through(Part& part, at::Tensor& output, uint64_t version, const at::Tensor& grad,
                      bool& graphs_break, Recompute&& recompute) {
  part.zero_grad();
  if (version != part.updates()) {
    if (!graphs_break) {
      try {
        output.backward(grad);
        return false;
      } catch (const c10::Error& e) {
        if (std::string(e.what()).find("modified by an inplace operation") == std::string::npos) throw;
        graphs_break = true;  // this part's graphs never survive an update: stop trying
        part.zero_grad();
      }
    }
    output = recompute();
    output.backward(grad);
    return true;
  }
  output.backward(grad);
  return false;
}


// Runs f, turning a LibTorch error (wrong shape, wrong dtype) into an Error saying what was fed.
template <class F>
auto guarded(const std::string& what, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const c10::Error& e) {
    FEDRA_FAIL("{}: {}", what, torch_error_reason(e));
  }
}


std::unique_ptr<CoordinatorStrategy> new_coordinator(const Job& job, const SplitOptions& options);
std::unique_ptr<WorkerStrategy> new_worker(const Job& job, const SplitOptions& options);

}  // namespace fedra::split
