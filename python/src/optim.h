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

 private:
  std::vector<at::Tensor> params_;
  std::vector<at::Tensor> anchor_;
  double proximal_mu_;
  std::unique_ptr<torch::optim::Optimizer> optimizer_;
};

}  // namespace fedra::python
