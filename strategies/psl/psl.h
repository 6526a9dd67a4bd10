// The partially separable element-loss strategy (PSL.md).
//
// The loss on class scores s and label y is sum_{j != y} exp(s_j - s_y) (or exp(2(s_j - s_y)),
// "psl2"), averaged over the batch; split by ordered class pair (i, j) it is a sum of element
// functions f_ij, each using only the samples labelled i and the weights that feed scores i and
// j. With the psnet model (core/model/model.h: shared convolutions, one tower of separable layers
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

#include "core/kit/option_groups.h"
#include "core/kit/registry.h"

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

enum class PslData { kCoordinator, kWorker };
FEDRA_ENUM_NAMES(PslData, {PslData::kCoordinator, "coordinator"}, {PslData::kWorker, "worker"})

struct PslOptions : SteppedOptions {
  PslOptions() {
    schedule_.steps_per_round(100).batch_size(100).allowed_batches({Batches::kShuffle, Batches::kSequential});
    optim_.optimizer(OptimizerKind::kAdam).lr(0.001);  // on the coordinator
  }
  FEDRA_ARG(PslData, data) = PslData::kCoordinator;

  template <class F>
  void visit(F&& f) {
    SteppedOptions::visit(f);
    f("data", data_,
      "coordinator (it holds the training set and sends each worker the rows its classes need) "
      "or worker (each worker evaluates its elements on its own data)");
  }
  void validate() const {}
};

// psl.step: one step for one worker.
struct StepIns {
  uint32_t round = 0;
  int64_t step = 0;
  NamedTensors weights;  // the current weights of the worker's sub-network
  // data=coordinator: the batch rows the worker's classes need, their labels as tower indices,
  // and the whole batch's size (the loss is a mean over it). Undefined with data=worker.
  at::Tensor x, y;
  int64_t batch = 0;
  std::string towers, pairs;  // the worker's share as text: "0,1,3" and "0-1,0-3"

  Message encode() const;
  // Refuses another kind, a missing share, or (with `rows`) missing batch rows, naming them.
  static StepIns decode(const Message& m, bool rows);
};

// psl.grad: a worker's element losses and the gradient over its sub-network.
struct StepGrad {
  NamedTensors grads;  // in the sub-network's parameter order
  double loss = 0;
  int64_t examples = 0;

  template <class F>
  void metrics(F&& f) {
    f("loss", loss, Field::kRequired);
    f("examples", examples, Field::kRequired);
  }
  Message encode(uint32_t round, int64_t step) const;
  // Refuses another kind or a missing loss or examples, naming the worker and the field.
  static StepGrad decode(Message&& m, const std::string& worker);
};

StrategyInfo psl_strategy();

}  // namespace fedra::psl
