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
// The collectives. With topology=ring (auto's choice when the workers have peer ports) they run
// over direct links in a ring (core/net/peer.h): each worker sends its part ("tensor.reduce" or
// "tensor.gather", numbered by step, op and origin rank) to its neighbours (up to 3 workers they
// are all the others) or, with more, to the next rank, which passes every part on until it has
// gone round; every worker ends with every part; a reduce adds them in rank
// order (every worker computes the same bits, the star's), a gather concatenates them. Each part is
// checked as it arrives (shape, finite values), naming its sender. The batch is drawn by worker 0
// from its data and passed round the ring ("tensor.batch"), so the workers need not hold the same
// data. The coordinator hears a heartbeat ("tensor.progress") at most once a second.
// With topology=star each part goes to the coordinator, which sums (in rank order) or
// concatenates and sends the result to all ("tensor.result"), and relays the batch.
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

#include "core/kit/message.h"
#include "core/kit/option_groups.h"
#include "core/kit/registry.h"
#include "core/model/model.h"

namespace fedra::tensor {

inline constexpr const char* kRun = "tensor.run";
inline constexpr const char* kBatch = "tensor.batch";
inline constexpr const char* kReduce = "tensor.reduce";
inline constexpr const char* kGather = "tensor.gather";
inline constexpr const char* kResult = "tensor.result";
inline constexpr const char* kDone = "tensor.done";
inline constexpr const char* kProgress = "tensor.progress";  // topology=ring: a heartbeat

// The schedule's epochs are passes over worker 0's data, which draws every batch; each worker
// steps its own slices with the optimiser.
struct TensorOptions : SteppedOptions {
  FEDRA_ARG(int64_t, workers) = 2;
  FEDRA_ARG(Topology, topology) = Topology::kAuto;
  FEDRA_ARG(InitOptions, init);

  template <class F>
  void visit(F&& f) {
    f("workers", workers_, "how many workers share each layer (the first N connected, by name)");
    f("topology", topology_,
      "star: batches, partial sums and gathers go through the coordinator; ring: the workers pass "
      "them among themselves over direct links and the coordinator hears only heartbeats; auto: "
      "ring when every worker has a peer port, else star");
    SteppedOptions::visit(f);
    f.group(init_);
  }
  void validate() const;
};

// tensor.batch: rank 0's batch for a step (to the others, through the coordinator or directly).
struct TensorBatch {
  uint64_t step = 0;
  at::Tensor x, y;
  Message encode() const;
  // Refuses a missing or mismatched tensor, naming `who`.
  static TensorBatch decode(const Message& m, const std::string& who);
};

// tensor.reduce and tensor.gather (a rank's part of a collective) and tensor.result (the
// collective's result, from the coordinator): op numbers a step's collectives in order; origin is
// the rank whose part it is, over direct links (-1: not given).
struct CollectivePart {
  uint64_t step = 0;
  int64_t op = 0;
  int64_t origin = -1;
  at::Tensor t;
  Message encode(const char* kind) const;
  static CollectivePart decode(const Message& m);
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
