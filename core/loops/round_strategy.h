// RoundStrategy: the base for round-driven schemes (FedAvg and its relatives).
//
// run() is the federated loop; subclasses fill in hooks named as the field names them:
//   select_workers  which workers take part in a round (default: seeded sampling by fraction
//                   and minimum, a different draw each round)
//   configure_fit   one instruction per chosen worker, built for that worker alone (no shared
//                   mutable instruction object leaks one worker's settings into another's);
//                   throwing fedra::Error leaves that worker out of the round as a Failure
//   accumulate_fit  called as each result arrives, so aggregation streams: throwing
//                   fedra::Error rejects that result, which becomes a Failure
//   aggregate_fit   called once the round's requests have all replied, failed or timed out,
//                   with the failures as explicit input; throwing fails the round (the model
//                   stays as it was and the reason is recorded)
//   evaluate        optional server-side evaluation of the current model
//   evaluate_federated  optional evaluation by the workers (on data they hold out), after the
//                   round's fit and evaluate; the strategy decides when it is due
// Each round ends with one metrics line (ctx.report_round) and, for a resumable() subclass, a
// checkpoint (ctx.checkpoint); with ctx.resume_round > 0 the loop restores the saved state and
// continues with the next round. If fewer than min_workers are
// connected the loop waits for them up to ctx.wait_timeout, then fails the run.
#pragma once

#include <chrono>
#include <cstdint>
#include <vector>

#include "core/kit/strategy.h"
#include "core/loops/cohort.h"

namespace fedra {

struct RoundConfig {
  int64_t rounds = 1;
  double fraction = 1.0;
  int64_t min_workers = 1;
  std::chrono::milliseconds fit_timeout{600000};
  int64_t eval_every = 1;  // evaluate every N rounds and after the last; 0 = never
};

class RoundStrategy : public CoordinatorStrategy {
 public:
  void run(Cohort& cohort, RunContext& ctx) final;

 protected:
  virtual RoundConfig round_config() const = 0;
  virtual void initialize(RunContext& ctx) { (void)ctx; }
  virtual std::vector<WorkerId> select_workers(uint32_t round, Cohort& cohort,
                                               const RunContext& ctx);
  virtual Message configure_fit(uint32_t round, const WorkerInfo& worker) = 0;
  // Sends the round's instructions and hands each accepted result to accumulate_fit; returns the
  // failures and counts the accepted results in `accepted`. Default: Cohort::request_all. A
  // strategy whose round is a protocol of several messages (secure aggregation) runs its own
  // exchange here.
  virtual std::vector<Failure> run_fit(uint32_t round, Cohort& cohort, std::vector<Instruction> instructions,
                                       Deadline deadline, size_t& accepted);
  virtual void accumulate_fit(uint32_t round, const WorkerInfo& worker, Message&& result) = 0;
  virtual Metrics aggregate_fit(uint32_t round, const std::vector<Failure>& failures) = 0;
  virtual Metrics evaluate(uint32_t round, RunContext& ctx) {
    (void)round;
    (void)ctx;
    return {};
  }
  // Figures for every round's line whether its fit succeeded or failed (e.g. the privacy spent).
  virtual Metrics standing_metrics(uint32_t round) {
    (void)round;
    return {};
  }
  virtual Metrics evaluate_federated(uint32_t round, uint32_t total, Cohort& cohort, RunContext& ctx) {
    (void)round;
    (void)total;
    (void)cohort;
    (void)ctx;
    return {};
  }
  // Checkpoint and resume: a subclass that returns true from resumable() hands its whole state
  // to checkpoint_state() after every round (for FedAvg, the global model: worker sampling and
  // local seeds follow from the job seed and the round) and takes it back in restore().
  virtual NamedTensors checkpoint_state() const { return {}; }
  virtual void restore(NamedTensors state) { (void)state; }
  // After the last round (also when it failed, before the job fails): e.g. FedAvg writes the
  // model files to ctx.out_dir.
  virtual void finished(RunContext& ctx) { (void)ctx; }

 private:
  // The round's instructions, one per chosen worker still connected; a worker whose instruction
  // cannot be made (configure_fit threw) goes to `unasked` with the reason.
  std::vector<Instruction> instructions_for(uint32_t round, Cohort& cohort, const RunContext& ctx,
                                            std::vector<Failure>& unasked);
};

}  // namespace fedra
