// Option groups that strategies compose: each declares its options, their help and their checks
// once (core/kit/options.h explains groups). A strategy picks the groups it needs and sets its own
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

#include "core/kit/options.h"

namespace fedra {

enum class OptimizerKind { kSgd, kAdam };
FEDRA_ENUM_NAMES(OptimizerKind, {OptimizerKind::kSgd, "sgd"}, {OptimizerKind::kAdam, "adam"})
std::string fedra_enum_refusal(OptimizerKind, const std::string& scope, std::string_view name,
                               const std::string& value, const std::vector<std::string>& choices);

// Which rows of a worker's data each step uses (core/data/batching.h explains each).
enum class Batches { kShuffle, kSequential, kNotebook, kNotebookPipeline };
FEDRA_ENUM_NAMES(Batches, {Batches::kShuffle, "shuffle"}, {Batches::kSequential, "sequential"},
                 {Batches::kNotebook, "notebook"}, {Batches::kNotebookPipeline, "notebook-pipeline"})

enum class OnFailure { kFail, kContinue };
FEDRA_ENUM_NAMES(OnFailure, {OnFailure::kFail, "fail"}, {OnFailure::kContinue, "continue"})

// Where a strategy's data goes between workers: through the coordinator (star), or over direct
// worker-to-worker links in a ring (core/net/peer.h); auto = ring when every worker has a peer port
// and there are at least two (can_link, core/net/cohort.h). gradsum and tensor.
enum class Topology { kAuto, kStar, kRing };
FEDRA_ENUM_NAMES(Topology, {Topology::kAuto, "auto"}, {Topology::kStar, "star"}, {Topology::kRing, "ring"})

// optimizer, lr, momentum, weight_decay: what every optimiser in Fedra takes (core/training/optimizer.h).
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

// Local training on a worker between two exchanges with the coordinator, the same in every scheme
// that trains locally (FedAvg and its variants, fedasync, fedbuff): how long, on what batches, with
// which optimiser, and FedProx's proximal term. Strategies set their own defaults.
struct LocalTrainingOptions {
  FEDRA_ARG(int64_t, local_epochs) = 1;
  FEDRA_ARG(int64_t, local_steps) = 0;
  FEDRA_ARG(int64_t, batch_size) = 32;
  FEDRA_ARG(OptimizerOptions, optim) = OptimizerOptions().momentum(0.9);
  FEDRA_ARG(double, proximal_mu) = 0;

  template <class F>
  void visit(F&& f) {
    f("local_epochs", local_epochs_, "local passes over the worker's data each time it trains");
    f("local_steps", local_steps_,
      "cap on local optimiser steps each time; 0 = no cap; with local_epochs 0, exactly this many steps "
      "(one of the two must be >= 1)");
    f("batch_size", batch_size_, "local mini-batch size");
    f.group(optim_);
    f("proximal_mu", proximal_mu_,
      "FedProx (Li et al. 2020): mu/2 * ||w - w_received||^2 added to the local loss (FedAsync's rho); 0 = none");
  }
  void validate(const std::string& scope) const;
  // Local optimiser steps one training takes on a worker holding n examples.
  int64_t planned_steps(int64_t n) const;
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
      "seed notebook's slicing), notebook-pipeline (its pipeline cell's); core/data/batching.h",
      allowed_batches_);
    f("step_timeout", step_timeout_, "seconds a step may wait for a worker before failing it");
  }
  void validate(const std::string& scope) const;
  std::chrono::milliseconds step_timeout_ms() const {
    return std::chrono::milliseconds(static_cast<int64_t>(step_timeout_ * 1000));
  }
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
