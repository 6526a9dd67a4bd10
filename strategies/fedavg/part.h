// FedAvg from parts: what a feature of the FedAvg family is, on each side.
//
// A round of FedAvg is always the same loop (strategies/fedavg/pipeline.h): sample workers, send
// each a fedavg.fit, take each fedavg.fit_result as it arrives, combine the round's accepted
// updates into an aggregate, step the server, evaluate, checkpoint. What varies is made of parts,
// each one file under strategies/fedavg/parts/ (both halves side by side) and each turned on by
// its own options:
//
//   coordinator                         worker
//   Stage   sees every step of a round   WorkerStage  runs around local training
//   Rule    combines the accepted updates (the weighted mean, a robust rule, DP's noised mean)
//   ServerStep  turns the aggregate into the next global model (a server optimiser)
//
// A part states what it needs, and the pipeline refuses, before any worker is asked and naming
// both parts, what cannot compose: a stage that must see each update cannot run where updates
// arrive only as their sum (secure aggregation), and a stage that brings its own rule (DP)
// cannot run beside another rule (a plugin's median). Nothing is bypassed silently.
//
// Wire: a part adds its own fields to the fedavg.fit it is configured into (options, metrics,
// tensors named "PART/NAME": docs/protocol.md), and its worker half reads them from there; a
// worker half that finds no fields of its part does nothing. So FedAvg's worker half runs every
// variant unchanged, and a part's two halves agree by construction.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/nn/modules/container/sequential.h>

#include "core/kit/message.h"
#include "core/kit/strategy.h"
#include "core/loops/cohort.h"
#include "core/training/training.h"

namespace fedra::fedavg {

struct FitIns;
struct FitRes;

// One round as the coordinator's parts see it.
struct Round {
  uint32_t number = 0;
  const NamedTensors* global = nullptr;  // the global model at the round's start
  uint64_t model_bytes = 0;              // its bytes
  size_t connected = 0;                  // workers connected when the round began
  size_t sampled = 0;                    // workers asked
  size_t accepted = 0;                   // updates taken so far
  std::string refusal;                   // why the round asks nobody (a part's limit), if it does not
};

// How a round's accepted updates become one aggregate (a model-shaped list of tensors; the
// ServerStep then makes it the next global model).
class Rule {
 public:
  virtual ~Rule() = default;
  // Its name in refusals: "mean", "median", "fedmedian's rule".
  virtual std::string name() const = 0;
  // A rule that is a weighted sum: aggregate = global + sum_i a_i (w_i - global) / sum_i a_i, each
  // a_i known before the update arrives (weight()). Secure aggregation can compute such a rule
  // from the sum alone (add_sum); any other rule needs each update.
  virtual bool linear() const { return false; }
  // A linear rule's a_i for `worker` (what secure aggregation multiplies its update by).
  virtual double weight(const WorkerInfo& worker) const {
    return static_cast<double>(std::max<int64_t>(worker.num_examples, 1));
  }
  // Before the workers are asked: "" to go on, or why this round cannot hold `workers` updates
  // (the round then asks nobody and fails with that reason).
  virtual std::string admits(const Round& round, size_t workers) const {
    (void)round;
    (void)workers;
    return "";
  }
  // A round begins, its workers chosen.
  virtual void begin(const Round& round) { (void)round; }
  // Takes one checked update (layout, finiteness and every stage's check done). Throwing rejects it.
  virtual void add(const Round& round, const WorkerInfo& worker, FitRes& update) = 0;
  // A linear rule's updates as secure aggregation delivers them: sum_i a_i (w_i - global) over
  // `count` uploaders, and sum_i a_i (float tensors of the model, in its order).
  virtual void add_sum(const Round& round, NamedTensors weighted_sum, double weight_sum, size_t count) {
    (void)round;
    (void)weighted_sum;
    (void)weight_sum;
    (void)count;
    FEDRA_FAIL("rule {} cannot take a sum of updates", name());
  }
  // The round's aggregate; called once, with at least min_results updates taken.
  virtual NamedTensors aggregate(const Round& round) = 0;
  // Forgets the round's updates (the round failed).
  virtual void discard() = 0;
  // The previous global model, whose memory the next aggregate may reuse if nothing else holds it.
  virtual void recycle(NamedTensors previous) { (void)previous; }
  // A rule that keeps state across rounds saves it for checkpoints, each name under its own
  // prefix ("PREFIX/..."), and takes out its own names in load_state.
  virtual NamedTensors state() const { return {}; }
  virtual void load_state(NamedTensors& state) { (void)state; }
};

// The server's step: the next global model from the round's aggregate.
class ServerStep {
 public:
  virtual ~ServerStep() = default;
  virtual std::string name() const = 0;
  // Turns `aggregate` into the next global model, in place; `global` is the current one.
  virtual void step(const NamedTensors& global, NamedTensors& aggregate) = 0;
  // As Rule::state and load_state.
  virtual NamedTensors state() const { return {}; }
  virtual void load_state(NamedTensors& state) { (void)state; }
};

// Where the updates a round takes come from, as far as a stage's needs go.
enum class Sight {
  kEachUpdate,  // each worker's update reaches the coordinator (the default)
  kSumOnly,     // only their weighted sum does (secure aggregation)
};

// A part of FedAvg on the coordinator. Every hook has a default that does nothing.
class Stage {
 public:
  virtual ~Stage() = default;
  // The option that turns it on, for refusals: "dp=server", "clip_norm", "scaffold".
  virtual std::string name() const = 0;

  // Once, before the first round, with the job's model: sizes its state, checks the model suits it.
  virtual void start(const Job& job, const NamedTensors& global, const torch::nn::Sequential& model) {
    (void)job;
    (void)global;
    (void)model;
  }

  // --- What it needs (checked when the pipeline is assembled).
  // Why it must see each update in the clear ("" if it need not).
  virtual std::string needs_each_update() const { return ""; }
  // What it lets the coordinator see: a stage that delivers only the sum says kSumOnly.
  virtual Sight sight() const { return Sight::kEachUpdate; }
  // A stage that brings the round's rule (DP's noised mean): the rule, and why no other will do.
  // Called once, when the pipeline is assembled.
  virtual std::unique_ptr<Rule> own_rule() { return nullptr; }
  virtual std::string why_own_rule() const { return ""; }

  // --- A round.
  // Before the workers are asked: may drop chosen workers (a fleet's offline devices) or refuse
  // the round (set round.refusal).
  virtual void select(Round& round, const std::vector<WorkerInfo>& connected, std::vector<WorkerId>& chosen) {
    (void)round;
    (void)connected;
    (void)chosen;
  }
  // Adds its fields to one worker's fedavg.fit.
  virtual void configure(const Round& round, const WorkerInfo& worker, Message& fit) {
    (void)round;
    (void)worker;
    (void)fit;
  }
  // A stage that runs the round's exchange itself (secure aggregation) returns its failures and
  // hands what it learnt to the rule (add_sum) and to `taken` (each uploader's figures);
  // nullopt: the plain exchange, one fedavg.fit_result per worker.
  struct Taken {
    std::vector<std::pair<std::string, std::map<std::string, double>>> figures;  // per uploader
  };
  virtual std::optional<std::vector<Failure>> exchange(Round& round, Cohort& cohort,
                                                       std::vector<Instruction>& instructions, Deadline deadline,
                                                       Rule& rule, Taken& taken) {
    (void)round;
    (void)cohort;
    (void)instructions;
    (void)deadline;
    (void)rule;
    (void)taken;
    return std::nullopt;
  }
  // One result, its model layout and finiteness checked, before the rule takes it: may change it
  // (clip it) or refuse it by throwing (a late device); takes out its own fields ("PART/" tensors,
  // its metrics).
  virtual void check(const Round& round, const WorkerInfo& worker, FitRes& update) {
    (void)round;
    (void)worker;
    (void)update;
  }
  // The rule took the update.
  virtual void accepted(const Round& round, const WorkerInfo& worker, const FitRes& update) {
    (void)round;
    (void)worker;
    (void)update;
  }

  // --- The round's end, in this order: close (always), then either discard (the round failed)
  // or updated (the new global model is in place).
  virtual void close(Round& round) { (void)round; }
  virtual void discard() {}
  virtual void updated(const Round& round, const NamedTensors& global) {
    (void)round;
    (void)global;
  }
  // Figures for the round's line: of a round that updated the model, and of every round.
  virtual void round_metrics(const Round& round, Metrics& line) const {
    (void)round;
    (void)line;
  }
  virtual void standing_metrics(const Round& round, Metrics& line) const {
    (void)round;
    (void)line;
  }

  // --- Checkpoints: its state under its own prefix; load takes its names out of `state`.
  virtual void save(NamedTensors& state) const { (void)state; }
  virtual void load(NamedTensors& state) { (void)state; }
};

// One fit on a worker, as its stages see it.
struct LocalFit {
  const Message& request;         // the fedavg.fit, with every part's fields
  const FitIns& ins;              // its common fields
  torch::nn::Sequential& model;   // the global model loaded; trained after `train`
  TrainOptions train;             // what local training will do (a stage may add to it)
  TrainStats stats;               // what it did (after training)
  double train_s = 0;             // how long training took (after training)
  FitRes& result;                 // the reply being built (after training)
  WorkerContext& ctx;
};

// A part of FedAvg on the worker. Stages keep their state across rounds (SCAFFOLD's c_i).
class WorkerStage {
 public:
  virtual ~WorkerStage() = default;
  // Before local training, the global model loaded.
  virtual void before(LocalFit& fit) { (void)fit; }
  // After local training, on the reply (fit.result.weights are the trained model's).
  virtual void after(LocalFit& fit) { (void)fit; }
  // A stage that sends the update itself instead of the plain reply (secure aggregation's
  // masking): the reply to return; nullopt when it is not asked to.
  virtual std::optional<Message> deliver(LocalFit& fit, WorkerLink& link) {
    (void)fit;
    (void)link;
    return std::nullopt;
  }
};

}  // namespace fedra::fedavg
