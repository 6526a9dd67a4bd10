// Tensor parallelism: every worker holds a slice of every layer of an MLP, and each step's
// forward and backward passes are computed by all of them together.
//
// The split (Megatron-style, the seed notebook's tensor-parallel cell generalised to any depth
// and N workers): layers alternate
//   column layers (fc1, fc3, ...)  split by output rows: worker r holds rows R_r of W and b and
//                                  computes its slice of the layer's output, ReLU included,
//                                  with no communication;
//   row layers (fc2, fc4, ...)     split by input columns, the same R_r as the layer before:
//                                  worker r multiplies its slice of the activations by its
//                                  columns; the partial sums are added (an all-reduce), the
//                                  bias only once (worker 0 holds it).
// A model with an odd number of layers ends on a column layer, whose output slices are
// concatenated (an all-gather) before the loss. Every worker then holds the whole output and
// computes the same loss.
//
// Backward runs the same way in reverse, each worker differentiating only its own slices with
// autograd, segment by segment: a row layer's output gradient is the same on every worker; a
// column layer's input gradient is the sum of every worker's partial (an all-reduce), needed
// below the first layer only. The first layer's input gradient is never computed.
//
// The collectives run through the coordinator: each worker sends its part ("tensor.reduce" or
// "tensor.gather", numbered by step and op), the coordinator sums (in rank order, so every
// worker receives the same bits) or concatenates, and sends the result to all ("tensor.result").
// The batch is drawn by worker 0 from its data and relayed to the others ("tensor.batch"), so
// the workers need not hold the same data.
//
// Rounds. A round is one exchange of steps_per_round steps. It starts with "tensor.run" carrying
// each worker's slices (and its optimiser state); it ends with "tensor.done" carrying them
// back, with worker 0's per-step losses. The coordinator assembles the whole model, evaluates it,
// appends the losses to OUT/losses.csv and writes model.bin at the end. A worker lost mid-round
// fails the round: its slices cannot be recomputed from the others.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <torch/nn/modules/container/sequential.h>

#include "core/message.h"
#include "core/options.h"
#include "core/registry.h"

namespace fedra::tensor {

inline constexpr const char* kRun = "tensor.run";
inline constexpr const char* kBatch = "tensor.batch";
inline constexpr const char* kReduce = "tensor.reduce";
inline constexpr const char* kGather = "tensor.gather";
inline constexpr const char* kResult = "tensor.result";
inline constexpr const char* kDone = "tensor.done";

struct TensorOptions {
  FEDRA_ARG(int64_t, workers) = 2;
  FEDRA_ARG(int64_t, steps) = 0;
  FEDRA_ARG(int64_t, epochs) = 1;
  FEDRA_ARG(int64_t, steps_per_round) = 0;
  FEDRA_ARG(int64_t, batch_size) = 32;
  FEDRA_ARG(double, lr) = 0.05;
  FEDRA_ARG(std::string, optimizer) = "sgd";
  FEDRA_ARG(double, momentum) = 0.0;
  FEDRA_ARG(double, weight_decay) = 0.0;
  FEDRA_ARG(std::string, batches) = "shuffle";
  FEDRA_ARG(double, step_timeout) = 60;
  FEDRA_ARG(int64_t, eval_every) = 1;
  FEDRA_ARG(std::string, init) = "seed";
  FEDRA_ARG(std::string, init_skip) = "";

  template <class F>
  void visit(F&& f) {
    f("workers", workers_, "how many workers share each layer (the first N connected, by name)");
    f("steps", steps_, "optimiser steps to run; 0 = use epochs");
    f("epochs", epochs_, "passes over worker 0's data (when steps is 0)");
    f("steps_per_round", steps_per_round_,
      "steps per round (one metrics line and evaluation each); 0 = one round per epoch");
    f("batch_size", batch_size_, "mini-batch size per step (drawn by worker 0)");
    f("lr", lr_, "learning rate");
    f("optimizer", optimizer_, "sgd (with momentum) or adam; each worker steps its own slices");
    f("momentum", momentum_, "SGD momentum");
    f("weight_decay", weight_decay_, "L2 weight decay");
    f("batches", batches_, "shuffle, sequential, notebook or notebook-pipeline (core/batching.h)");
    f("step_timeout", step_timeout_, "seconds a step may wait for a worker before failing the round");
    f("eval_every", eval_every_, "evaluate on the coordinator's test set every N rounds; 0 = never");
    f("init", init_, "model initialisation: seed (from --seed) or after-data (as in the notebook)");
    f("init_skip", init_skip_,
      "with after-data: what to draw and discard first: N models, or items like "
      "'mlp:16-8-1*2 linear:16-4:nobias' (core/model.h)");
  }
  void validate() const;
};

StrategyInfo tensor_strategy();

// Which slice of each Linear layer worker `rank` of `world` holds.
struct ShardPlan {
  std::vector<std::string> layers;  // fc1, fc2, ...
  std::vector<int64_t> in, out;     // per layer
  // Per layer, per rank: [begin, end) of the rows (column layers, even index) or of the input
  // columns (row layers, odd index).
  std::vector<std::vector<std::pair<int64_t, int64_t>>> ranges;
  int64_t world = 1;
  bool column(size_t layer) const { return layer % 2 == 0; }
};

// Checks that `model` is an MLP (flatten, Linear layers with ReLU between) whose split
// dimensions are at least `world` wide; throws naming what does not fit.
ShardPlan plan_shards(const torch::nn::Sequential& model, int64_t world);
// Worker `rank`'s slices of the whole model's parameters ("fc1.weight", ...; row layers' bias
// only for rank 0), and the inverse: the whole model from every rank's slices.
NamedTensors shard_of(const ShardPlan& plan, const NamedTensors& full, int64_t rank);
NamedTensors assemble(const ShardPlan& plan, const std::vector<NamedTensors>& shards);

}  // namespace fedra::tensor
