// Pipeline parallelism: the network cut into N consecutive stages on N workers, micro-batches
// in flight, each stage alternating one forward and one backward (1F1B).
//
// Stage 0 draws micro-batch k from its data, runs its layers and sends the activations (with the
// targets) up; stage s runs its layers on them and sends its own up; the last stage computes the
// loss, backpropagates and sends the gradient of its input down; each stage backpropagates that
// through its layers and takes an optimiser step on its own parameters, micro-batch by
// micro-batch (PipeDream's asynchronous 1F1B: no flush between micro-batches). The seed
// notebook's two-stage cell is this with in_flight = 3.
//
// Schedule. Stage s < N-1 first runs W_s = max(1, in_flight - s) forwards, then alternates one
// backward (the oldest micro-batch) and one forward; the last stage runs each micro-batch's
// forward and backward back to back. in_flight = 1 is plain sequential training; in_flight = N
// is PipeDream's; stage 0's forward of micro-batch k then sees the updates of micro-batches up
// to k - in_flight only (staleness in_flight - 1).
//
// Weight stashing (stash=true). A stage keeps a copy of its weights from each in-flight
// micro-batch's forward and uses it for that micro-batch's backward, so the gradient is the
// gradient of the forward that produced the loss; the update is applied to the current weights.
// Without it the backward recomputes the stage's forward with the current weights. Either way a
// stage keeps only the input of each micro-batch in flight and recomputes its forward for the
// backward (activation recomputation); the last stage needs neither. The recomputation replays
// the forward's random draws (torch's CPU generator state is kept with the micro-batch, as
// torch.utils.checkpoint does) and leaves batch norm's running statistics as the forward left
// them, so a micro-batch counts once.
//
// A TorchScript model is staged by its top-level children (core/model/script_model.h script_chain;
// pipeline.cuts names children), after checking on the test data's first example that running
// them in order gives the script's own output. Stages return their buffers with their parameters.
//
// Messages. With topology=chain (auto's choice when the workers have peer ports) stage s links
// directly to stage s + 1 (core/net/peer.h): "pipeline.act" goes up that link and "pipeline.grad"
// comes back down it, each checked by its receiver (step, the cut's shape, finite values), and
// the coordinator hears only a heartbeat ("pipeline.progress") at most once a second. With
// topology=star both go through the coordinator, which checks and relays them.
// Rounds. A round is one exchange of steps_per_round micro-batches; the pipeline drains at its
// end, every stage returns its parameters ("pipeline.done"; the last stage adds its per-step
// losses) and the coordinator evaluates the whole model, appends OUT/losses.csv and writes
// model.bin at the end. A stage lost mid-round fails the round.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <torch/nn/modules/container/sequential.h>

#include "core/kit/option_groups.h"
#include "core/kit/registry.h"
#include "core/model/model.h"

namespace fedra::pipeline {

inline constexpr const char* kRun = "pipeline.run";
inline constexpr const char* kAct = "pipeline.act";
inline constexpr const char* kGrad = "pipeline.grad";
inline constexpr const char* kDone = "pipeline.done";
inline constexpr const char* kProgress = "pipeline.progress";  // topology=chain: a heartbeat

enum class Topology { kAuto, kStar, kChain };
FEDRA_ENUM_NAMES(Topology, {Topology::kAuto, "auto"}, {Topology::kStar, "star"}, {Topology::kChain, "chain"})

// Fault injection for tests (--pipeline.testing.NAME, listed by --help-testing).
struct PipelineTesting {
  FEDRA_ARG(int64_t, inject_bad_shape) = -1;
  template <class F>
  void visit(F&& f) {
    f("inject_bad_shape", inject_bad_shape_,
      "stage 0 sends micro-batch K's activations one column short; -1 = never");
  }
  void validate(const std::string& scope) const;
};

// A step of the schedule is a micro-batch; epochs are passes over stage 0's data; each stage
// steps its own parameters with the optimiser.
struct PipelineOptions : SteppedOptions {
  FEDRA_ARG(int64_t, stages) = 2;
  FEDRA_ARG(std::string, cuts) = "";
  FEDRA_ARG(int64_t, in_flight) = 0;
  FEDRA_ARG(bool, stash) = true;
  FEDRA_ARG(Topology, topology) = Topology::kAuto;
  FEDRA_ARG(InitOptions, init);
  FEDRA_ARG(PipelineTesting, testing);

  template <class F>
  void visit(F&& f) {
    f("stages", stages_, "pipeline stages, one per worker (the first N connected, by name)");
    f("cuts", cuts_,
      "the last layer of each stage but the last, comma-separated (e.g. relu1,relu2); empty: "
      "balanced by parameter count");
    f("in_flight", in_flight_,
      "micro-batches stage 0 runs forward before its first backward; 1 = sequential training, "
      "0 = the number of stages (PipeDream)");
    f("stash", stash_, "weight stashing: each backward uses the weights of its own forward");
    f("topology", topology_,
      "star: activations and gradients go through the coordinator; chain: each stage links "
      "directly to the next and the coordinator hears only heartbeats; auto: chain when every "
      "worker has a peer port, else star");
    SteppedOptions::visit(f);
    f.group(init_);
    f.testing(testing_);
  }
  void validate() const;
  int64_t effective_in_flight() const { return in_flight_ > 0 ? in_flight_ : stages_; }
};

// pipeline.act (a stage's output for a micro-batch, with its targets, to the next stage) and
// pipeline.grad (the gradient at that output, back to the stage before).
struct StageTensor {
  uint64_t step = 0;  // the micro-batch
  at::Tensor t;       // "act" or "grad"
  at::Tensor target;  // pipeline.act only
  Message encode(const char* kind) const;
  // Refuses another kind or a missing tensor.
  static StageTensor decode(const Message& m, const char* kind);
};

StrategyInfo pipeline_strategy();

// The network's layers in `stages` consecutive Sequentials sharing `full`'s modules (parameter
// names stay the whole network's). `cuts` names the last layer of each stage but the last; empty:
// cuts before layers with parameters, balancing parameter counts. Throws naming the layers.
std::vector<torch::nn::Sequential> cut_stages(const torch::nn::Sequential& full, int64_t stages,
                                              const std::string& cuts);

// How many forwards stage `stage` of `stages` runs before its first backward.
int64_t warmup_forwards(int64_t stage, int64_t stages, int64_t in_flight);

}  // namespace fedra::pipeline
