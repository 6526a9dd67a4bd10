#include "python/src/optim.h"

#include <torch/torch.h>

#include "core/kit/error.h"
#include "core/training/torch_optimizer.h"

namespace fedra::python {

LocalOptimizer::LocalOptimizer(std::vector<at::Tensor> params, const OptimizerConfig& config, double proximal_mu)
    : params_(std::move(params)), proximal_mu_(proximal_mu) {
  FEDRA_REQUIRE(proximal_mu >= 0, "proximal_mu must be >= 0, got {}", proximal_mu);
  for (const auto& p : params_) {
    FEDRA_REQUIRE(p.is_leaf() && p.requires_grad(), "the optimiser's tensors must be the model's parameters "
                  "(leaf tensors that require grad): pass model.parameters()");
    if (proximal_mu_ > 0) anchor_.push_back(p.detach().clone());
  }
  optimizer_ = make_torch_optimizer(params_, config);
}

void LocalOptimizer::zero_grad() { optimizer_->zero_grad(); }

void LocalOptimizer::step() {
  if (proximal_mu_ > 0) {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < params_.size(); ++i) {
      if (params_[i].grad().defined()) params_[i].mutable_grad().add_(params_[i] - anchor_[i], proximal_mu_);
    }
  }
  optimizer_->step();
}

void LocalOptimizer::backward_step(const at::Tensor& loss, int64_t examples) {
  loss.backward();
  step();
  loss_sum_ += loss.item<double>() * static_cast<double>(examples);
  examples_ += examples;
  ++steps_;
}

}  // namespace fedra::python
