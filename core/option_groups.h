// Option groups that strategies compose: each declares its options, their help and their checks
// once (core/options.h explains groups). A strategy picks the groups it needs and sets its own
// defaults with the chainable setters:
//
//   FEDRA_ARG(OptimizerOptions, optim) = OptimizerOptions().optimizer(OptimizerKind::kAdam).lr(0.001);
//
// Groups appear flat in the strategy's options ("--psl.lr", "[psl] lr = ...").
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "core/options.h"

namespace fedra {

enum class OptimizerKind { kSgd, kAdam };
FEDRA_ENUM_NAMES(OptimizerKind, {OptimizerKind::kSgd, "sgd"}, {OptimizerKind::kAdam, "adam"})
std::string fedra_enum_refusal(OptimizerKind, const std::string& scope, std::string_view name,
                               const std::string& value, const std::vector<std::string>& choices);

// Which rows of a worker's data each step uses (core/batching.h explains each).
enum class Batches { kShuffle, kSequential, kNotebook, kNotebookPipeline };
FEDRA_ENUM_NAMES(Batches, {Batches::kShuffle, "shuffle"}, {Batches::kSequential, "sequential"},
                 {Batches::kNotebook, "notebook"}, {Batches::kNotebookPipeline, "notebook-pipeline"})

enum class Init { kSeed, kAfterData };
FEDRA_ENUM_NAMES(Init, {Init::kSeed, "seed"}, {Init::kAfterData, "after-data"})

enum class OnFailure { kFail, kContinue };
FEDRA_ENUM_NAMES(OnFailure, {OnFailure::kFail, "fail"}, {OnFailure::kContinue, "continue"})

// Where a strategy's data goes between workers: through the coordinator (star), or over direct
// worker-to-worker links in a ring (core/peer.h); auto = ring when every worker has a peer port
// and there are at least two (can_link, core/cohort.h). gradsum and tensor.
enum class Topology { kAuto, kStar, kRing };
FEDRA_ENUM_NAMES(Topology, {Topology::kAuto, "auto"}, {Topology::kStar, "star"}, {Topology::kRing, "ring"})

// optimizer, lr, momentum, weight_decay: what every optimiser in Fedra takes (core/optimizer.h).
struct OptimizerOptions {
  FEDRA_ARG(OptimizerKind, optimizer) = OptimizerKind::kSgd;
  FEDRA_ARG(double, lr) = 0.05;
  FEDRA_ARG(double, momentum) = 0.0;
  FEDRA_ARG(double, weight_decay) = 0.0;

  template <class F>
  void visit(F&& f) {
    f("lr", lr_, "learning rate");
    f("optimizer", optimizer_, "sgd (with momentum) or adam");
    f("momentum", momentum_, "SGD momentum");
    f("weight_decay", weight_decay_, "L2 weight decay");
  }
  void validate(const std::string& scope) const;
};

// The steps of a step-driven strategy (SteppedStrategy): how many, in rounds of how many, on
// batches of what size drawn how, and how long one step may wait.
struct ScheduleOptions {
  FEDRA_ARG(int64_t, steps) = 0;
  FEDRA_ARG(int64_t, epochs) = 1;
  FEDRA_ARG(int64_t, steps_per_round) = 0;
  FEDRA_ARG(int64_t, batch_size) = 32;
  FEDRA_ARG(Batches, batches) = Batches::kShuffle;
  FEDRA_ARG(double, step_timeout) = 60;
  // The batch orders this strategy can follow (all, when empty): not an option, set by the strategy.
  FEDRA_ARG(std::vector<Batches>, allowed_batches);

  template <class F>
  void visit(F&& f) {
    f("steps", steps_, "optimiser steps to run; 0 = use epochs");
    f("epochs", epochs_, "passes over the data (when steps is 0; docs/strategies.md says whose)");
    f("steps_per_round", steps_per_round_,
      "steps per round: one metrics line and evaluation per round; 0 = one round per epoch");
    f("batch_size", batch_size_, "mini-batch size per step");
    f("batches", batches_,
      "which rows each step uses: shuffle (seeded per worker and epoch), sequential, notebook (the "
      "seed notebook's slicing), notebook-pipeline (its pipeline cell's); core/batching.h",
      allowed_batches_);
    f("step_timeout", step_timeout_, "seconds a step may wait for a worker before failing it");
  }
  void validate(const std::string& scope) const;
  std::chrono::milliseconds step_timeout_ms() const {
    return std::chrono::milliseconds(static_cast<int64_t>(step_timeout_ * 1000));
  }
};

// How the initial model is drawn (core/model.h: build_initial_model).
struct InitOptions {
  FEDRA_ARG(Init, init) = Init::kSeed;
  FEDRA_ARG(std::string, init_skip) = "";

  template <class F>
  void visit(F&& f) {
    f("init", init_, "seed (from --seed) or after-data (drawn after the synthetic data, as the seed notebook does)");
    f("init_skip", init_skip_, "with after-data: N models, or items (core/model.h), drawn and discarded first");
  }
  void validate(const std::string& scope) const;
};

struct EvalOptions {
  FEDRA_ARG(int64_t, eval_every) = 1;

  template <class F>
  void visit(F&& f) {
    f("eval_every", eval_every_, "evaluate on the coordinator's test set every N rounds and after the last; 0 = never");
  }
  void validate(const std::string& scope) const;
  bool due(uint32_t round, bool last) const {
    return eval_every_ > 0 && (round % static_cast<uint32_t>(eval_every_) == 0 || last);
  }
};

// What a step-driven strategy does when a worker fails mid-step.
struct FailureOptions {
  FEDRA_ARG(OnFailure, on_failure) = OnFailure::kFail;
  FEDRA_ARG(int64_t, min_workers) = 1;

  template <class F>
  void visit(F&& f) {
    f("on_failure", on_failure_, "fail (stop the run) or continue (go on without the worker)");
    f("min_workers", min_workers_, "least workers a round needs (and, with continue, keeps)");
  }
  void validate(const std::string& scope) const;
};

// What every step-driven strategy takes (SteppedStrategy): its schedule, its optimiser and when
// to evaluate. A strategy's options derive from it and set their own defaults in the constructor.
struct SteppedOptions {
  FEDRA_ARG(ScheduleOptions, schedule);
  FEDRA_ARG(OptimizerOptions, optim);
  FEDRA_ARG(EvalOptions, eval);

  template <class F>
  void visit(F&& f) {
    f.group(schedule_);
    f.group(optim_);
    f.group(eval_);
  }
};

}  // namespace fedra
