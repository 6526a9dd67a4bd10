// fedra.loops' optimiser: the C++ worker's own torch::optim step (core/training/torch_optimizer.h)
// over a Python model's parameters, with FedProx's proximal term as train_local adds it. One call
// from Python per step instead of torch.optim's per-parameter Python, and the C++ worker's bits.
#pragma once

#include <memory>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/optim/optimizer.h>

#include "core/training/optimizer.h"

namespace fedra::python {

class LocalOptimizer {
 public:
  // `params` are the model's parameters (trained in place); proximal_mu > 0 pulls them towards
  // their values now (FedProx's anchor), as train_local does.
  LocalOptimizer(std::vector<at::Tensor> params, const OptimizerConfig& config, double proximal_mu);

  void zero_grad();  // zeroes each gradient, as the C++ loop does before each step
  void step();       // the proximal term, then one optimiser step
  // loss.backward(), step(), and `loss` x `examples` added to the running sum, as the C++ loop
  // keeps it: one call from Python for what would otherwise be four.
  void backward_step(const at::Tensor& loss, int64_t examples);
  double loss_sum() const { return loss_sum_; }
  int64_t examples() const { return examples_; }
  int64_t steps() const { return steps_; }

 private:
  std::vector<at::Tensor> params_;
  std::vector<at::Tensor> anchor_;
  double proximal_mu_;
  double loss_sum_ = 0;
  int64_t examples_ = 0, steps_ = 0;
  std::unique_ptr<torch::optim::Optimizer> optimizer_;
};

}  // namespace fedra::python
