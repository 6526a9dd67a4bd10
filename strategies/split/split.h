// Split learning: the bottom of the network and the raw data stay on the worker, the rest runs
// on the coordinator, and backpropagation crosses the network at the cut.
//
// The cut is part of the model spec ("cnn:cut=pool1", core/model/model.h); both halves build the whole
// network from the job's seed and keep their part, so a split run starts from exactly the
// weights a one-process run starts from.
//
// Per step (labels=coordinator):
//   worker       x, y = its batch; a = bottom(x)            -- "split.act" {act, labels} -->
//   coordinator  loss = L(top(a), y); backward to a; step the top optimiser
//                                                            <-- "split.grad" {grad} --
//   worker       a.backward(grad); step the bottom optimiser
// U-shaped (labels=worker): the head (the last layers) and the labels stay on the worker too;
// three messages per step plus the cut gradient:
//   worker -- act --> coordinator: o = middle(a) -- out --> worker: loss = L(head(o), y),
//   backward to o, step the head -- outgrad {dL/do, loss} --> coordinator: backward middle,
//   step it -- grad {dL/da} --> worker: backward bottom, step it.
//
// Schedules (several workers):
//   sequential  workers take turns, one local epoch each per round; the bottom (and head)
//               weights pass from one to the next through the coordinator (Singh et al.'s
//               "split learning with weight passing")
//   parallel    SplitFed: every worker runs at once with its own copy of the bottom; the
//               coordinator's top serves their activations in arrival order; at the end of the
//               round the workers' bottoms are averaged (weighted by examples) and sent out
//
// Pipelining (pipeline=D): a worker keeps up to D micro-batches in flight, sending the next
// activations before the gradient of the previous ones is back, so the network round trip and
// the coordinator's work overlap the worker's. The price is staleness: the activation of step
// s+k is computed with bottom weights that lack the updates of steps s..s+k-1 (at most D-1
// updates old), and in the U-shaped variant the same holds for the middle's output. When a
// part's weights changed between a micro-batch's forward and its backward, the forward is
// recomputed with the current weights before backward (the gradient is then taken at the
// current weights, applied to the error signal of the stale activation). pipeline=1 is exact
// sequential training: with one worker it equals training the whole network in one process.
//
// The coordinator holds the whole network's weights only in the sense split learning allows:
// the client-side weights it relays between workers (and averages, for parallel), which it also
// uses to evaluate the model and write model.bin. Raw inputs never leave the worker; in the
// U-shaped variant neither do labels (tests/integration/split_test.cc inspects every frame).
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/kit/message.h"
#include "core/kit/option_groups.h"
#include "core/kit/registry.h"

namespace fedra::split {

inline constexpr const char* kRun = "split.run";          // coordinator -> worker: a turn
inline constexpr const char* kAct = "split.act";          // worker -> coordinator: cut activations
inline constexpr const char* kOut = "split.out";          // U-shaped: the middle's output
inline constexpr const char* kOutGrad = "split.outgrad";  // U-shaped: its gradient, and the loss
inline constexpr const char* kGrad = "split.grad";        // coordinator -> worker: cut gradient
inline constexpr const char* kDone = "split.done";        // worker -> coordinator: end of turn

enum class Labels { kCoordinator, kWorker };
FEDRA_ENUM_NAMES(Labels, {Labels::kCoordinator, "coordinator"}, {Labels::kWorker, "worker"})
enum class Schedule { kSequential, kParallel };
FEDRA_ENUM_NAMES(Schedule, {Schedule::kSequential, "sequential"}, {Schedule::kParallel, "parallel"})

// Fault injection for tests (--split.testing.NAME, listed by --help-testing).
struct SplitTesting {
  FEDRA_ARG(int64_t, inject_exit) = -1;
  FEDRA_ARG(int64_t, inject_bad_shape) = -1;
  template <class F>
  void visit(F&& f) {
    f("inject_exit", inject_exit_,
      "the last worker (by name) dies right after sending the activations of this step; -1 = never");
    f("inject_bad_shape", inject_bad_shape_, "the last worker sends activations one feature short at this step; -1 = never");
  }
  void validate(const std::string& scope) const;
};

struct SplitOptions {
  FEDRA_ARG(Labels, labels) = Labels::kCoordinator;
  FEDRA_ARG(Schedule, schedule) = Schedule::kSequential;
  FEDRA_ARG(int64_t, epochs) = 1;
  FEDRA_ARG(int64_t, max_steps) = 0;
  FEDRA_ARG(int64_t, batch_size) = 32;
  FEDRA_ARG(Batches, batches) = Batches::kShuffle;
  FEDRA_ARG(OptimizerOptions, optim);
  FEDRA_ARG(int64_t, pipeline) = 1;
  FEDRA_ARG(FailureOptions, failure);
  FEDRA_ARG(double, step_timeout) = 60;
  FEDRA_ARG(EvalOptions, eval);
  FEDRA_ARG(bool, exchange_only) = false;
  FEDRA_ARG(SplitTesting, testing);

  template <class F>
  void visit(F&& f) {
    f("labels", labels_,
      "coordinator (labels travel with the activations) or worker (U-shaped: the head and the "
      "labels stay on the worker)");
    f("schedule", schedule_,
      "sequential (workers take turns, bottom weights passed on) or parallel (SplitFed: all at "
      "once, bottoms averaged each round)");
    f("epochs", epochs_, "rounds; each is one pass over every worker's data");
    f("max_steps", max_steps_, "cap on the steps of one worker's turn (0 = a whole local epoch)");
    f("batch_size", batch_size_, "mini-batch size");
    f("batches", batches_, "shuffle (seeded per worker and epoch) or sequential",
      std::vector<Batches>{Batches::kShuffle, Batches::kSequential});
    f.group(optim_);  // every part's optimiser
    f("pipeline", pipeline_,
      "micro-batches a worker keeps in flight; 1 = none (exact), more overlaps the round trip "
      "with compute at the cost of staleness (docs/strategies.md)");
    f.group(failure_);
    f("step_timeout", step_timeout_, "seconds a step may wait for a worker before failing it");
    f.group(eval_);
    f("exchange_only", exchange_only_,
      "benchmark the round trip alone: the worker sends its first batch's activations every "
      "step without computing, the coordinator answers with a constant gradient of the same "
      "shape without computing (labels=coordinator only)");
    f.testing(testing_);
  }
  void validate() const;
  std::chrono::milliseconds step_timeout_ms() const {
    return std::chrono::milliseconds(static_cast<int64_t>(step_timeout_ * 1000));
  }
};

// split.run: one worker's turn. Defaults live here only.
struct TurnIns {
  uint32_t round = 0;
  int64_t first = 0;   // the turn's first step
  int64_t steps = 0;   // steps in the turn
  bool last = false;   // the worker is the last by name (where the test injections act)
  NamedTensors weights;  // the client-side weights: the bottom, and the head when U-shaped
  // The worker's optimiser state to take up before the turn ("opt/bottom/NAME", "opt/head/NAME"
  // on the wire, option "opt_state" = 1), sent when the worker's own may differ from the
  // coordinator's record: after a resume, a rolled-back round, or a worker that rejoined. Empty
  // with set_opt_state: start from a fresh optimiser.
  bool set_opt_state = false;
  NamedTensors opt_state;
  // The worker is to return its optimiser state with split.done ("opt/..." tensors beside the
  // weights; option "want_state" = 1): the coordinator checkpoints it or may roll the round back.
  bool want_state = false;

  Message encode() const;
  // Refuses another kind or a missing field, naming it.
  static TurnIns decode(const Message& m);
};

// split.done: the end of a worker's turn.
struct TurnDone {
  NamedTensors weights;  // the client-side weights after the turn
  NamedTensors opt_state;  // with TurnIns::want_state: the worker's optimiser state, "bottom/..", "head/.."

  int64_t examples = 0;  // trained on: the weight of these weights in SplitFed's average
  int64_t steps = 0;
  int64_t recomputes = 0;
  double compute_ms = 0, wait_ms = 0, rtt_ms = 0;  // per-step means

  template <class F>
  void metrics(F&& f) {
    f("examples", examples, Field::kRequired);
    f("steps", steps, Field::kRequired);
    f("recomputes", recomputes);
    f("compute_ms", compute_ms);
    f("wait_ms", wait_ms);
    f("rtt_ms", rtt_ms);
  }
  Message encode(uint32_t round) const;
  // Refuses another kind or a missing examples or steps, naming the worker and the field.
  static TurnDone decode(Message&& m, const std::string& worker);
};

// The messages of a turn's steps, each one tensor at the cut (step = the step):
//   split.act      worker -> coordinator  the bottom's activations; with the labels unless U-shaped
//   split.grad     coordinator -> worker  the gradient at the cut
//   split.out      coordinator -> worker  U-shaped: the middle's output, for the worker's head
//   split.outgrad  worker -> coordinator  U-shaped: the gradient at the middle's output, and the
//                                         step's loss, examples and (ce) correct predictions
struct CutMessage {
  uint64_t step = 0;
  at::Tensor tensor;  // act, grad or out
  at::Tensor labels;  // split.act, unless U-shaped (undefined then)
  double loss = 0, examples = 0;
  std::optional<double> correct;  // split.outgrad with the ce loss

  Message encode(const char* kind) const;
  // Refuses another kind or a missing tensor or figure, naming `who`.
  static CutMessage decode(Message&& m, const char* kind, const std::string& who);
};

StrategyInfo split_strategy();

}  // namespace fedra::split
