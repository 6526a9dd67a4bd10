// The torch::optim optimiser a worker's local training steps with (train_local), over any list of
// parameters: the C++ loop builds it over its model, a Python worker's loop (fedra.loops) over its
// nn.Module's parameters, so both take the same steps to the bit.
#pragma once

#include <memory>
#include <vector>

#include <torch/optim/optimizer.h>

#include "core/training/optimizer.h"

namespace fedra {

// SGD (momentum, weight decay) or Adam (betas, eps, weight decay) as `config` names; throws on an
// unknown name.
std::unique_ptr<torch::optim::Optimizer> make_torch_optimizer(std::vector<at::Tensor> params,
                                                              const OptimizerConfig& config);

}  // namespace fedra
