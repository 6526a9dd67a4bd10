// The partially separable element-loss strategy (PSL.md).
//
// The loss on class scores s and label y is sum_{j != y} exp(s_j - s_y) (or exp(2(s_j - s_y)),
// "psl2"), averaged over the batch; split by ordered class pair (i, j) it is a sum of element
// functions f_ij, each using only the samples labelled i and the weights that feed scores i and
// j. With the psnet model (core/model.h: shared convolutions, one tower of separable layers
// per class) those weights are the shared trunk plus towers i and j.
//
// Every unordered pair {i, j} (both ordered elements) is owned by exactly one worker; a worker
// holds and differentiates only its sub-network: the trunk and the towers of the classes its
// pairs touch. Per step the coordinator, which holds all weights and the optimiser, sends each
// worker the current weights of its sub-network ("psl.step"); the worker returns its elements'
// loss and the gradient over its sub-network ("psl.grad"); the coordinator scatter-adds the
// partial gradients (trunk entries collect a contribution from every worker) and steps.
//
// Data: data=coordinator (the coordinator holds the training set and sends each worker the
// batch rows whose labels its towers need: model parallelism) or data=worker (each worker
// evaluates its elements on its own private batch: federated).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include "core/options.h"
#include "core/registry.h"

namespace fedra::psl {

inline constexpr const char* kStep = "psl.step";
inline constexpr const char* kGrad = "psl.grad";

// What one worker owns: unordered class pairs (i < j) and the towers (classes) they touch, sorted.
struct Share {
  std::vector<std::pair<int64_t, int64_t>> pairs;
  std::vector<int64_t> towers;
};

// Assigns the C(C-1)/2 unordered pairs to `workers` workers (1 <= workers <= C(C-1)/2), each
// pair exactly once, pair counts differing by at most one, keeping the number of towers per
// worker small. The algorithm: greedy placement of the pairs in a shuffled order, each into the
// worker (with room left) whose tower set it grows least (ties: fewest towers, then fewest
// pairs), repeated over `restarts` seeded orders, keeping the assignment with the smallest
// largest tower set, then the smallest total. Deterministic.
std::vector<Share> assign_pairs(int64_t classes, int64_t workers, int64_t restarts = 400);

// The rows of each parameter of the full psnet that the sub-network over `towers` holds, in
// the sub-network's parameter order (the psnet built with classes = towers.size()).
// conv1 is shared (all rows: `rows` undefined); conv2 has 3 rows (output channels) per tower;
// each separable layer one row per tower.
struct SubParam {
  std::string name;
  at::Tensor rows;  // int64 row indices into the full parameter; undefined = the whole parameter
};
std::vector<SubParam> sub_network_map(const torch::nn::Module& full, int64_t classes,
                                      const std::vector<int64_t>& towers);
int64_t sub_network_size(const torch::nn::Module& full, const std::vector<SubParam>& map);

// The share's element losses on a batch: `scores` [b, T] are the sub-network's scores (tower
// order), `local_targets` [b] the samples' labels as indices into share.towers (samples of
// other classes must be left out by the caller). sum over samples of sum over owned pairs
// {y, j} of exp(p (s_j - s_y)), divided by `batch_size` (the whole batch's size).
at::Tensor element_loss(const at::Tensor& scores, const at::Tensor& local_targets, const Share& share,
                        int64_t batch_size, bool squared);

// Row indices of `targets` whose class is one of `towers`, and those classes as tower indices.
std::pair<at::Tensor, at::Tensor> select_rows(const at::Tensor& targets, const std::vector<int64_t>& towers);

struct PslOptions {
  FEDRA_ARG(int64_t, epochs) = 1;
  FEDRA_ARG(int64_t, steps) = 0;
  FEDRA_ARG(int64_t, steps_per_round) = 100;
  FEDRA_ARG(int64_t, batch_size) = 100;
  FEDRA_ARG(std::string, batches) = "shuffle";
  FEDRA_ARG(std::string, data) = "coordinator";
  FEDRA_ARG(std::string, optimizer) = "adam";
  FEDRA_ARG(double, lr) = 0.001;
  FEDRA_ARG(double, momentum) = 0.0;
  FEDRA_ARG(double, weight_decay) = 0.0;
  FEDRA_ARG(double, step_timeout) = 60;
  FEDRA_ARG(int64_t, eval_every) = 1;

  template <class F>
  void visit(F&& f) {
    f("epochs", epochs_, "passes over the training data (when steps is 0)");
    f("steps", steps_, "optimiser steps to run; 0 = use epochs");
    f("steps_per_round", steps_per_round_,
      "steps per round: one metrics line and evaluation per round; 0 = one round per epoch");
    f("batch_size", batch_size_, "mini-batch size (data=worker: per worker)");
    f("batches", batches_, "shuffle (seeded) or sequential");
    f("data", data_,
      "coordinator (it holds the training set and sends each worker the rows its classes need) "
      "or worker (each worker evaluates its elements on its own data)");
    f("optimizer", optimizer_, "sgd (with momentum) or adam, on the coordinator");
    f("lr", lr_, "learning rate");
    f("momentum", momentum_, "SGD momentum");
    f("weight_decay", weight_decay_, "L2 weight decay");
    f("step_timeout", step_timeout_, "seconds a step waits for the workers' gradients");
    f("eval_every", eval_every_, "evaluate on the coordinator's test set every N rounds; 0 = never");
  }
  void validate() const;
};

StrategyInfo psl_strategy();

}  // namespace fedra::psl
