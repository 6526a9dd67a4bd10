// ParamOptimizer: SGD (momentum, weight decay) and Adam that step one parameter at a time.
//
// torch::optim steps every parameter at once; a scheme that streams (gradsum sums and applies
// the gradient bucket by bucket as it arrives) needs to step a subset as soon as its gradients
// are known, and to ship the optimiser's state to a replica. The update rules are torch 1.13's,
// operation for operation, so a ParamOptimizer and torch::optim give the same bits
// (tests/unit/core/optimizer_test.cc):
//   SGD:  g += wd * p;  buf = g (first step) or momentum * buf + g;  p -= lr * buf
//   Adam: g += wd * p;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
//         p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
// State is per parameter (momentum buffer; Adam's m, v and step count) and travels as named
// tensors "NAME.momentum", "NAME.exp_avg", "NAME.exp_avg_sq", "NAME.step".
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include "core/kit/message.h"
#include "core/kit/option_groups.h"

namespace fedra {

struct OptimizerConfig {
  std::string name = "sgd";  // "sgd" or "adam"
  double lr = 0.01;
  double momentum = 0.0;  // SGD
  double weight_decay = 0.0;
  double beta1 = 0.9;  // Adam
  double beta2 = 0.999;
  double eps = 1e-8;
  void validate() const;

  // From a strategy's optimiser options; Adam's betas and eps keep their defaults.
  static OptimizerConfig from(const OptimizerOptions& o) {
    OptimizerConfig c;
    c.name = enum_name(o.optimizer());
    c.lr = o.lr();
    c.momentum = o.momentum();
    c.weight_decay = o.weight_decay();
    return c;
  }
};

class ParamOptimizer {
 public:
  // `params` are updated in place; `names` name them in state().
  ParamOptimizer(OptimizerConfig config, std::vector<std::string> names, std::vector<at::Tensor> params);

  // Applies one update to parameter i with gradient `grad` (same shape, float).
  void step(size_t i, const at::Tensor& grad);

  // Streaming form: begin_step() once per optimiser step, then update() any number of disjoint
  // slices of the flattened parameters, in any order; together they make the same step as step()
  // on every parameter (the rules are elementwise). `grad` holds elements [offset, offset+n)
  // of parameter i flattened.
  void begin_step();
  void update(size_t i, int64_t offset, const at::Tensor& grad);

  NamedTensors state() const;  // copies
  // Loads state written by state() of an optimiser over the same parameters; throws naming a
  // missing or mismatched tensor.
  void load_state(const NamedTensors& state);

  size_t size() const { return params_.size(); }
  const OptimizerConfig& config() const { return config_; }

 private:
  // The update rules, on elements [offset, offset + grad.numel()) of parameter i, Adam step t.
  void apply(size_t i, int64_t offset, const at::Tensor& grad, int64_t t);

  OptimizerConfig config_;
  std::vector<std::string> names_;
  std::vector<at::Tensor> params_;
  std::vector<at::Tensor> buf_;      // SGD momentum, Adam exp_avg
  std::vector<at::Tensor> buf2_;     // Adam exp_avg_sq
  std::vector<int64_t> steps_;       // Adam step count
  int64_t step_count_ = 0;           // begin_step() calls
};

// A module's parameters with one ParamOptimizer over them, stepping from their .grad: what a
// training loop on a whole module (fedra train, each part of a split network) needs.
class ModuleOptimizer {
 public:
  ModuleOptimizer(torch::nn::Module& module, const OptimizerConfig& config);
  void zero_grad();  // drops every parameter's .grad
  // Applies each parameter's .grad (those without one are left alone) and counts the update.
  void step();
  // Steps taken so far: a saved forward pass can tell whether the weights changed under it.
  uint64_t updates() const { return updates_; }
  // ParamOptimizer::state() and load_state() of the optimiser within (the update count stays).
  NamedTensors state() const { return opt_.state(); }
  void load_state(const NamedTensors& state) { opt_.load_state(state); }

 private:
  std::vector<at::Tensor> live_;  // the module's parameters (they carry .grad)
  ParamOptimizer opt_;
  uint64_t updates_ = 0;
};

}  // namespace fedra
