#include "core/training/optimizer.h"

#include <cmath>

#include <ATen/ATen.h>
#include <torch/torch.h>

#include "core/kit/error.h"

namespace fedra {

void OptimizerConfig::validate() const {
  FEDRA_REQUIRE(name == "sgd" || name == "adam", "unknown optimizer '{}'; use sgd or adam", name);
  FEDRA_REQUIRE(lr > 0, "lr must be > 0, got {}", lr);
  FEDRA_REQUIRE(momentum >= 0 && momentum < 1, "momentum must be in [0, 1), got {}", momentum);
  FEDRA_REQUIRE(weight_decay >= 0, "weight_decay must be >= 0, got {}", weight_decay);
  FEDRA_REQUIRE(beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1 && eps > 0,
                "Adam needs 0 <= beta1, beta2 < 1 and eps > 0");
}

ParamOptimizer::ParamOptimizer(OptimizerConfig config, std::vector<std::string> names,
                               std::vector<at::Tensor> params)
    : config_(std::move(config)), names_(std::move(names)), params_(std::move(params)) {
  config_.validate();
  FEDRA_ASSERT(names_.size() == params_.size(), "{} names for {} parameters", names_.size(), params_.size());
  buf_.resize(params_.size());
  buf2_.resize(params_.size());
  steps_.assign(params_.size(), 0);
}

void ParamOptimizer::step(size_t i, const at::Tensor& grad) {
  FEDRA_ASSERT(i < params_.size(), "parameter {} of {}", i, params_.size());
  FEDRA_REQUIRE(grad.sizes() == params_[i].sizes() && grad.scalar_type() == params_[i].scalar_type(),
                "gradient for '{}' is {} but the parameter is {}", names_[i], describe_tensor(grad),
                describe_tensor(params_[i]));
  apply(i, 0, grad.reshape({-1}), ++steps_[i]);
}

void ParamOptimizer::begin_step() { ++step_count_; }

void ParamOptimizer::update(size_t i, int64_t offset, const at::Tensor& grad) {
  FEDRA_ASSERT(i < params_.size(), "parameter {} of {}", i, params_.size());
  const int64_t n = grad.numel();
  FEDRA_REQUIRE(grad.dim() == 1 && offset >= 0 && offset + n <= params_[i].numel() &&
                    grad.scalar_type() == params_[i].scalar_type(),
                "gradient slice [{}, {}) of '{}' ({}) does not fit the parameter {}", offset,
                offset + n, names_[i], describe_tensor(grad), describe_tensor(params_[i]));
  // One step count per begin_step(): every slice of a step uses the same bias correction.
  steps_[i] = step_count_;
  apply(i, offset, grad, step_count_);
}

void ParamOptimizer::apply(size_t i, int64_t offset, const at::Tensor& grad, int64_t t) {
  at::NoGradGuard no_grad;
  const int64_t n = grad.numel();
  at::Tensor p = params_[i].view({-1}).narrow(0, offset, n);
  at::Tensor g = grad;
  if (config_.weight_decay != 0) g = g.add(p, config_.weight_decay);
  if (config_.name == "sgd") {
    if (config_.momentum != 0) {
      // A zero buffer times momentum plus g is exactly g: the same bits as torch's first step.
      if (!buf_[i].defined()) buf_[i] = at::zeros_like(params_[i]);
      at::Tensor b = buf_[i].view({-1}).narrow(0, offset, n);
      b.mul_(config_.momentum).add_(g);
      g = b;
    }
    p.add_(g, -config_.lr);
    return;
  }
  if (!buf_[i].defined()) {
    buf_[i] = at::zeros_like(params_[i]);
    buf2_[i] = at::zeros_like(params_[i]);
  }
  const double bias1 = 1 - std::pow(config_.beta1, static_cast<double>(t));
  const double bias2 = 1 - std::pow(config_.beta2, static_cast<double>(t));
  at::Tensor m = buf_[i].view({-1}).narrow(0, offset, n);
  at::Tensor v = buf2_[i].view({-1}).narrow(0, offset, n);
  m.mul_(config_.beta1).add_(g, 1 - config_.beta1);
  v.mul_(config_.beta2).addcmul_(g, g, 1 - config_.beta2);
  at::Tensor denom = (v.sqrt() / std::sqrt(bias2)).add_(config_.eps);
  p.addcdiv_(m, denom, -config_.lr / bias1);
}

NamedTensors ParamOptimizer::state() const {
  NamedTensors out;
  for (size_t i = 0; i < params_.size(); ++i) {
    if (!buf_[i].defined()) continue;
    if (config_.name == "sgd") {
      out.emplace_back(names_[i] + ".momentum", buf_[i].clone());
    } else {
      out.emplace_back(names_[i] + ".exp_avg", buf_[i].clone());
      out.emplace_back(names_[i] + ".exp_avg_sq", buf2_[i].clone());
      out.emplace_back(names_[i] + ".step", at::tensor({steps_[i]}, at::kLong));
    }
  }
  return out;
}

void ParamOptimizer::load_state(const NamedTensors& state) {
  std::map<std::string, const at::Tensor*> by_name;
  for (const auto& [n, t] : state) by_name[n] = &t;
  size_t used = 0;
  step_count_ = 0;  // the loaded state's, below
  auto take = [&](const std::string& name, const at::Tensor& like) -> at::Tensor {
    auto it = by_name.find(name);
    if (it == by_name.end()) return {};
    ++used;
    FEDRA_REQUIRE(it->second->sizes() == like.sizes() && it->second->scalar_type() == like.scalar_type(),
                  "optimizer state '{}' is {} but the parameter is {}", name,
                  describe_tensor(*it->second), describe_tensor(like));
    return it->second->clone();
  };
  for (size_t i = 0; i < params_.size(); ++i) {
    if (config_.name == "sgd") {
      buf_[i] = take(names_[i] + ".momentum", params_[i]);
      continue;
    }
    buf_[i] = take(names_[i] + ".exp_avg", params_[i]);
    buf2_[i] = take(names_[i] + ".exp_avg_sq", params_[i]);
    FEDRA_REQUIRE(buf_[i].defined() == buf2_[i].defined(), "optimizer state for '{}' is incomplete", names_[i]);
    steps_[i] = 0;
    auto it = by_name.find(names_[i] + ".step");
    if (it != by_name.end()) {
      FEDRA_REQUIRE(it->second->numel() == 1 && it->second->scalar_type() == at::kLong,
                    "optimizer state '{}.step' must be one int64", names_[i]);
      steps_[i] = it->second->item<int64_t>();
      step_count_ = std::max(step_count_, steps_[i]);
      ++used;
    }
  }
  FEDRA_REQUIRE(used == state.size(), "optimizer state has {} tensors this optimizer does not use",
                state.size() - used);
}

namespace {

std::vector<std::string> parameter_names(const torch::nn::Module& module) {
  std::vector<std::string> names;
  for (const auto& p : module.named_parameters()) names.push_back(p.key());
  return names;
}

std::vector<at::Tensor> detached_parameters(const torch::nn::Module& module) {
  std::vector<at::Tensor> params;
  for (const auto& p : module.parameters()) params.push_back(p.detach());
  return params;
}

}  // namespace

ModuleOptimizer::ModuleOptimizer(torch::nn::Module& module, const OptimizerConfig& config)
    : live_(module.parameters()), opt_(config, parameter_names(module), detached_parameters(module)) {}

void ModuleOptimizer::zero_grad() {
  for (auto& p : live_) p.mutable_grad() = at::Tensor();
}

void ModuleOptimizer::step() {
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < live_.size(); ++i) {
    if (live_[i].grad().defined()) opt_.step(i, live_[i].grad());
  }
  ++updates_;
}

}  // namespace fedra
