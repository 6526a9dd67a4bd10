// SteppedStrategy: the base of the step-driven schemes (gradsum, split, psl, tensor, pipeline).
//
// Their coordinator halves share one loop, written here once:
//   prepare()                     build the model and whatever the strategy derives from it
//   wait for workers_needed()     up to ctx.wait_timeout, then fail saying how many came
//   start(workers by name)        the strategy fixes its ranks, shares or stages
//   plan_steps()                  total steps, steps per round, steps per epoch
//   for each round:               wait for workers again (new ones may join between rounds),
//     run_round(first, count)     the strategy's steps: its exchange with the workers
//     + fit_s, step_ms, epoch     timing the loop adds to the strategy's own metrics
//     + evaluation                test_accuracy, test_loss, eval_s when EvalOptions says so
//     ctx.report_round            one metrics line and the progress line
//     checkpoint                  state() with the loop's step and round, when one is due
//   model.bin                     the trained model, written at the end, and also when a round
//                                 fails after others completed, if save_on_failure(), so the
//                                 file holds the last recorded round (the message says which)
// Checkpoints and retries. Between rounds the coordinator holds all a job needs to continue:
// state() returns it (weights, optimiser state, and whatever a strategy keeps of its workers'
// state, e.g. split learning's bottom optimisers) and restore() takes it back. Batches follow
// from the job seed, the worker's name and the step (core/data/batching.h), so no data-order state
// exists beyond the step. With ctx.resume_round > 0 the loop restores the checkpoint and goes on
// with the next round. With ctx.round_retries > 0 it keeps a copy of state() at each round's
// start; a round that throws is rolled back to it (restore()), and run again once
// workers_needed() are connected (a worker restarted with the same name rejoins), up to
// round_retries times per round; the failed attempt leaves no metrics line.
// A strategy supplies its step; everything a user sees around it is the same in all of them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <torch/nn/modules/container/sequential.h>

#include "core/kit/option_groups.h"
#include "core/kit/strategy.h"
#include "core/loops/cohort.h"
#include "core/training/optimizer.h"

namespace fedra {

struct InitOptions;

struct StepPlan {
  int64_t total = 0;      // steps in the run
  int64_t per_round = 1;  // steps per round (the last round may have fewer)
  int64_t per_epoch = 1;  // steps in one pass over the data, for the "epoch" metric
  // False when a "step" of the plan is a whole epoch (split learning's rounds): the loop then
  // adds no step_ms or epoch (the strategy reports its own).
  bool fine = true;
  int64_t rounds() const { return (total + per_round - 1) / per_round; }
  // From the schedule options and the examples of one epoch.
  static StepPlan from(const ScheduleOptions& schedule, int64_t examples_per_epoch);
};

// The state of a coordinator that holds one model and one optimiser over its parameters
// (gradsum, psl): "model/NAME" (copies) and "opt/NAME..." (ParamOptimizer::state()).
NamedTensors model_and_optimizer_state(const torch::nn::Module& model, const ParamOptimizer& optimizer);
// The reverse: loads "model/" into `model` in place and "opt/" into `optimizer`; refuses any
// other entry, naming it and `strategy`.
void restore_model_and_optimizer(const NamedTensors& state, torch::nn::Module& model, ParamOptimizer& optimizer,
                                 const std::string& strategy);

struct RoundSteps {
  uint32_t round = 0;
  int64_t first = 0;  // the first step of the round
  int64_t count = 0;  // steps in it
};

class SteppedStrategy : public CoordinatorStrategy {
 public:
  void run(Cohort& cohort, RunContext& ctx) final;

 protected:
  // `name` words messages ("gradsum needs 2 workers"); `eval` says when to evaluate. Refuses an
  // unknown loss.
  SteppedStrategy(Job job, std::string name, EvalOptions eval);

  virtual void prepare(const RunContext& ctx) = 0;
  virtual size_t workers_needed() const = 0;
  // Called once the needed workers are connected, with all connected workers sorted by name.
  virtual void start(Cohort& cohort, const std::vector<WorkerInfo>& workers) {
    (void)cohort;
    (void)workers;
  }
  virtual StepPlan plan_steps(const std::vector<WorkerInfo>& workers) const = 0;
  // The line logged once the plan is known.
  virtual std::string describe(const StepPlan& plan) const = 0;
  // One round; returns its own metrics (status, losses, ...). Throwing fails the run.
  virtual Metrics run_round(Cohort& cohort, const RunContext& ctx, const RoundSteps& steps) = 0;
  // The whole model as it stands between rounds: evaluated and written to model.bin.
  virtual torch::nn::Sequential model() const = 0;
  virtual bool save_on_failure() const { return false; }
  // The strategy's state between rounds (copies: later rounds must not change it), and its
  // restoration, after start(). restore() also tells the strategy that its workers' own state
  // may be behind (they get theirs again with their next request).
  virtual NamedTensors state() const = 0;
  virtual void restore(const NamedTensors& state) = 0;

 public:
  bool resumable() const final { return true; }

 protected:

  const Job& job() const { return job_; }
  // The job's model, drawn as `init` says (core/model/model.h: build_initial_model).
  torch::nn::Sequential initial_model(const RunContext& ctx, const InitOptions& init) const;
  // Waits until `n` workers are connected, or fails naming the round (0: before training).
  void require_workers(Cohort& cohort, const RunContext& ctx, size_t n, uint32_t round) const;

 private:
  void train(Cohort& cohort, RunContext& ctx);

  Job job_;
  std::string name_;
  EvalOptions eval_;
  uint32_t completed_ = 0;  // rounds recorded
};

}  // namespace fedra
