// FedAvg (McMahan et al. 2017): workers train locally, the coordinator averages the models
// weighted by each worker's example count; and the family built on it from parts.
//
// Per round the coordinator samples workers (fraction, minimum, seeded), sends each its own
// fedavg.fit (the global model, the local training settings, a per-worker seed, and the fields
// of every part that is on), and folds each fedavg.fit_result into the round's rule as it
// arrives, so the weighted mean holds one model-sized sum however many workers take part. A
// result is rejected (becomes a failure) if a required field is missing, if its tensors do not
// match the model's names, shapes and dtypes, if any value is NaN or infinite, or if a part
// refuses it. The round fails, keeping the previous model, if fewer than min_results results
// were accepted. The worker's optimiser is created afresh each round (the FedAvg convention).
//
// The parts (strategies/fedavg/part.h; one file each under strategies/fedavg/parts/): FedProx,
// SCAFFOLD, FedBN, norm clipping, robust rules, differential privacy, secure aggregation,
// simulated fleets, server optimisers, and the test attacks. Each is turned on by its options
// and refuses, by name, what it cannot compose with.
//
// FedAvgCoordinator is exported to be subclassed: a variant sets its own Rule or ServerStep, or
// adds a Stage, in its constructor (examples/plugins: fedmedian, fedavgm; docs/plugins.md), and
// keeps everything else, FedAvg's worker half included.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <torch/nn/modules/container/sequential.h>

#include "core/federated/fleet.h"
#include "core/federated/privacy.h"
#include "core/federated/robust_aggregation.h"
#include "core/federated/server_optimizer.h"
#include "core/kit/message.h"
#include "core/kit/option_groups.h"
#include "core/kit/registry.h"
#include "core/loops/round_strategy.h"
#include "strategies/fedavg/part.h"
#include "strategies/fedavg/pipeline.h"
#include "strategies/fedavg/secagg.h"

namespace fedra::fedavg {

inline constexpr const char* kFit = "fedavg.fit";
inline constexpr const char* kFitResult = "fedavg.fit_result";
inline constexpr const char* kEvaluate = "fedavg.evaluate";
// A worker loop's own figures in a fedavg.fit_result ("fit.accuracy"): the round's line holds each
// one's example-weighted mean over the accepted updates, under the same name.
inline constexpr const char* kFitMetric = "fit.";
inline constexpr const char* kEvaluateResult = "fedavg.evaluate_result";

// How an update is corrupted, for robustness tests (--fedavg.testing.attack).
enum class Attack { kNone, kSignFlip, kScale, kNoise };
FEDRA_ENUM_NAMES(Attack, {Attack::kNone, "none"}, {Attack::kSignFlip, "sign_flip"}, {Attack::kScale, "scale"},
                 {Attack::kNoise, "noise"})

// Byzantine workers for tests and benchmarks (--fedavg.testing.NAME, listed by --help-testing):
// the named workers are told to corrupt what they send. With u = w - global their update:
// sign_flip sends global - s u, scale sends global + s u, noise sends w + s N(0, 1) (seeded).
struct FedAvgTesting {
  FEDRA_ARG(std::string, byzantine) = "";
  FEDRA_ARG(Attack, attack) = Attack::kSignFlip;
  FEDRA_ARG(double, attack_scale) = 10;
  FEDRA_ARG(std::string, secagg_drop) = "";
  FEDRA_ARG(std::string, secagg_cheat) = "";
  template <class F>
  void visit(F&& f) {
    f("byzantine", byzantine_, "comma-separated worker names that attack; empty: none");
    f("attack", attack_, "sign_flip, scale or noise");
    f("attack_scale", attack_scale_, "s: the factor (sign_flip, scale) or the noise's standard deviation");
    f("secagg_drop", secagg_drop_,
      "NAME:STEP[:exit][@ROUND],...: under secagg the named worker drops out after sending keys, shares or "
      "masked (its request fails; with :exit its process exits), every round or round ROUND only");
    f("secagg_cheat", secagg_cheat_,
      "NAME:KIND[@ROUND],...: under secagg the named worker cheats: wrong_share, replay or length");
  }
  void validate(const std::string&) const {}
  bool names(const std::string& worker) const;
  // The value for `worker` in a NAME:VALUE,... list ("" if it is not named).
  static std::string value_for(const std::string& list, const std::string& worker);
};

// Federated evaluation: workers evaluate the global model on the data they hold out (--holdout).
struct FedEvalOptions {
  FEDRA_ARG(int64_t, fed_eval_every) = 0;
  FEDRA_ARG(double, fed_eval_fraction) = 1.0;
  template <class F>
  void visit(F&& f) {
    f("fed_eval_every", fed_eval_every_,
      "ask workers to evaluate the global model on their held-out data (--holdout) every N rounds "
      "and after the last; 0 = never");
    f("fed_eval_fraction", fed_eval_fraction_, "fraction of connected workers asked to evaluate, (0, 1]");
  }
  void validate(const std::string& scope) const;
  bool due(uint32_t round, bool last) const {
    return fed_eval_every_ > 0 && (round % static_cast<uint32_t>(fed_eval_every_) == 0 || last);
  }
};

// Local training's options (core/kit/option_groups.h), then this scheme's own.
struct FedAvgOptions : LocalTrainingOptions {
  FEDRA_ARG(int64_t, rounds) = 10;
  FEDRA_ARG(double, fraction) = 1.0;
  FEDRA_ARG(int64_t, min_workers) = 1;
  FEDRA_ARG(int64_t, min_results) = 1;
  FEDRA_ARG(bool, scaffold) = false;
  FEDRA_ARG(bool, local_bn) = false;
  FEDRA_ARG(bool, exchange_only) = false;
  FEDRA_ARG(ServerOptOptions, server);
  FEDRA_ARG(RobustOptions, robust);
  FEDRA_ARG(DpOptions, privacy);
  FEDRA_ARG(SecAggOptions, secure);
  FEDRA_ARG(double, round_timeout) = 600;
  FEDRA_ARG(double, round_deadline) = 0;
  FEDRA_ARG(FleetOptions, fleet);
  FEDRA_ARG(EvalOptions, eval);
  FEDRA_ARG(FedEvalOptions, fed_eval);
  FEDRA_ARG(FedAvgTesting, testing);

  template <class F>
  void visit(F&& f) {
    f("rounds", rounds_, "federated rounds to run");
    f("fraction", fraction_, "fraction of connected workers sampled each round (0, 1]");
    f("min_workers", min_workers_, "least workers sampled per round; the round waits for them");
    f("min_results", min_results_, "least accepted results for a round to update the model");
    f.group(local());
    f("exchange_only", exchange_only_,
      "no local training: each worker returns the model it received, so a round costs what Fedra itself "
      "costs (benchmarks/fedavg_round.py); local_epochs and local_steps are then not used");
    f("scaffold", scaffold_,
      "SCAFFOLD (Karimireddy et al. 2020): control variates correct each local step for client drift; "
      "needs plain SGD (momentum 0); doubles the bytes of parameters each way");
    f("local_bn", local_bn_,
      "FedBN (Li et al. 2021): each worker keeps its batch norm layers' weights and running statistics "
      "across rounds instead of taking the global ones (the coordinator's model, which it evaluates and "
      "saves, holds their average); needs a model with batch norm");
    f.group(server_);
    f.group(robust_);
    f.group(privacy_);
    f.group(secure_);
    f("round_timeout", round_timeout_, "seconds a round waits for results before failing stragglers");
    f("round_deadline", round_deadline_,
      "seconds of the fleet's clock a round waits (clock=virtual: simulated seconds); later results are "
      "dropped and their work wasted; 0 = wait for every sampled worker");
    f.group(fleet_);
    f.group(eval_);
    f.group(fed_eval_);
    f.testing(testing_);
  }
  // The checks across options: each part's own (SCAFFOLD's optimiser), then whether the parts
  // these options turn on compose (strategies/fedavg/pipeline.h).
  void validate() const;
  const LocalTrainingOptions& local() const { return *this; }
  LocalTrainingOptions& local() { return *this; }
  RoundConfig round_config() const;
};

// fedavg.fit: what one worker trains with in one round, besides the parts' fields (part.h).
struct FitIns {
  uint32_t round = 0;
  NamedTensors weights;  // the global model (shared with the coordinator's, not copied)
  LocalTrainingOptions train;
  uint64_t seed = 1;  // the worker's local shuffling

  Message encode() const;
  // Refuses a message of another kind or one lacking a field, naming it. The parts' tensors
  // ("PART/NAME") are left out of `weights`; their stages read them from the message.
  static FitIns decode(const Message& m);
};

// fedavg.fit_result: the trained model and what it was trained on.
struct FitRes {
  uint32_t round = 0;
  NamedTensors weights;
  NamedTensors side;         // the parts' tensors ("PART/NAME"), each taken by its stage
  int64_t num_examples = 0;  // the weight of this result in the average
  double train_loss = 0;     // mean loss over the local steps
  int64_t steps = 0;
  double load_s = 0, train_s = 0, fit_s = 0;  // where the worker's time went
  std::map<std::string, double> extra;  // the parts' figures (e.g. dp_unclipped)

  template <class F>
  void metrics(F&& f) {
    f("num_examples", num_examples, Field::kRequired);
    f("train_loss", train_loss, Field::kRequired);
    f("steps", steps);
    f("load_s", load_s);
    f("train_s", train_s);
    f("fit_s", fit_s);
  }
  Message encode() const;
  // Refuses another kind, another round, a missing or non-positive num_examples or a missing
  // train_loss, naming the worker and the field.
  static FitRes decode(Message&& m, uint32_t round, const std::string& worker);
};

// fedavg.evaluate_result: the global model evaluated on a worker's held-out data.
struct EvaluateRes {
  uint32_t round = 0;
  // "class_examples" and "class_correct" (int64 [classes]) when the data has classes.
  NamedTensors counts;
  int64_t num_examples = 0;
  double loss = 0;
  int64_t correct = 0;
  std::map<std::string, double> extra;  // a variant's own metrics (FedAvgWorker::evaluation_metrics)

  template <class F>
  void metrics(F&& f) {
    f("num_examples", num_examples, Field::kRequired);
    f("loss", loss, Field::kRequired);
    f("correct", correct, Field::kRequired);
  }
  Message encode() const;
  // Refuses another kind or round, a missing or non-positive count, a loss that is not finite,
  // correct or class counts that do not add up, naming the worker.
  static EvaluateRes decode(Message&& m, uint32_t round, const std::string& worker);
};

class FedAvgCoordinator : public RoundStrategy {
 public:
  FedAvgCoordinator(const Job& job, FedAvgOptions options);

  // Checks that the parts compose (each refusal names both parts) and starts them; before the
  // first round. The registry calls it as the strategy is made, so a refusal ends the job before
  // any worker is asked; run() calls it too, for coordinators made directly. Idempotent.
  void assemble();

 protected:
  // --- What a variant changes, in its constructor (before assemble()).
  // The round's rule instead of the options' (the weighted mean, or a robust rule).
  void set_rule(std::unique_ptr<Rule> rule) { pipeline_.set_rule(std::move(rule)); }
  // The server's step instead of the options' server optimiser.
  void set_server_step(std::unique_ptr<ServerStep> step) { pipeline_.set_server_step(std::move(step)); }
  // One more part, after the built-in ones.
  void add_stage(std::unique_ptr<Stage> stage) { pipeline_.add_stage(std::move(stage)); }

  // --- Override points.
  // The instruction for one worker (default: the global model and the options' local settings);
  // the parts then add their fields.
  virtual FitIns configure(uint32_t round, const WorkerInfo& worker);
  // Turns the aggregate into the next global model (default: the ServerStep, then set_global).
  // An override that does not call this one must not leave a server optimiser unused: the round
  // fails saying so.
  virtual void server_update(uint32_t round, NamedTensors aggregate);
  // Extra metrics for the round's line (default: none).
  virtual Metrics round_metrics(uint32_t round) {
    (void)round;
    return {};
  }

  const NamedTensors& global() const { return global_; }
  void set_global(NamedTensors next);
  const FedAvgOptions& options() const { return options_; }
  const Job& job() const { return job_; }

  // RoundStrategy's hooks, written once here.
  void initialize(RunContext& ctx) override;
  RoundConfig round_config() const override { return options_.round_config(); }
  std::vector<WorkerId> select_workers(uint32_t round, Cohort& cohort, const RunContext& ctx) override;
  Message configure_fit(uint32_t round, const WorkerInfo& worker) override;
  std::vector<Failure> run_fit(uint32_t round, Cohort& cohort, std::vector<Instruction> instructions,
                               Deadline deadline, size_t& accepted) override;
  void accumulate_fit(uint32_t round, const WorkerInfo& worker, Message&& result) override;
  Metrics aggregate_fit(uint32_t round, const std::vector<Failure>& failures) override;
  Metrics standing_metrics(uint32_t round) override;
  Metrics evaluate(uint32_t round, RunContext& ctx) override;
  // Federated evaluation (fed_eval_every): a sample of workers evaluates the global model on its
  // held-out data; the figures are example-weighted (fed_eval_* in metrics.jsonl).
  Metrics evaluate_federated(uint32_t round, uint32_t total, Cohort& cohort, RunContext& ctx) override;
  bool resumable() const override { return true; }
  // The global model, then the parts' state, each under its own prefix ("server_opt/...",
  // "scaffold/c/...", "dp/...", "fleet/...").
  NamedTensors checkpoint_state() const override;
  void restore(NamedTensors state) override;
  // The global model as OUT/model.bin (and OUT/model.pt for a TorchScript model).
  void finished(RunContext& ctx) override;

 private:
  // What a round took, for its line.
  struct Tally {
    double loss_sum = 0, weight_sum = 0;
    int64_t examples = 0;
    double accumulate_s = 0, worker_load_s = 0, worker_train_s = 0;
    double fit_cpu_s = 0;  // the coordinator thread's CPU time in the round's fit exchange
    std::map<std::string, double> fit_metrics, fit_weights;  // "fit.NAME": sum of value x examples, of examples
    void take(int64_t num_examples, double loss, double load_s, double train_s);
    // The "fit.NAME" figures among a result's metrics.
    void take_fit_metrics(int64_t num_examples, const std::map<std::string, double>& metrics);
  };
  Metrics updated_round(uint32_t round, const Tally& tally);

  Job job_;
  FedAvgOptions options_;
  torch::nn::Sequential model_{nullptr};  // evaluates and saves global_
  NamedTensors global_;
  Pipeline pipeline_;
  Round round_;
  Tally tally_;
  bool stepped_ = false;  // server_update reached the ServerStep this round
};

// FedAvg's worker half: loads the global model, trains it locally as the fedavg.fit says, with
// every part's worker stage around the training, and returns it. Reads nothing from the job's
// options, so every FedAvg variant reuses it as it is.
class FedAvgWorker : public WorkerStrategy {
 public:
  explicit FedAvgWorker(const Job& job);
  Message handle(const Message& request, WorkerContext& ctx, WorkerLink& link) override;

 protected:
  // Override point for a variant's own evaluation figures: called with the global model loaded
  // and the worker's held-out data; each value is averaged over workers weighted by example count
  // and written as fed_eval_NAME (docs/plugins.md). Default: none.
  virtual std::map<std::string, double> evaluation_metrics(torch::nn::Sequential& model, const Dataset& held_out) {
    (void)model;
    (void)held_out;
    return {};
  }
  // A variant's own worker stage, after the built-in ones.
  void add_stage(std::unique_ptr<WorkerStage> stage) { stages_.push_back(std::move(stage)); }

 private:
  Message fit(const Message& request, WorkerContext& ctx, WorkerLink& link);
  Message evaluate(const Message& request, WorkerContext& ctx);

  Job job_;
  torch::nn::Sequential model_{nullptr};
  std::vector<std::unique_ptr<WorkerStage>> stages_;
};

StrategyInfo fedavg_strategy();

// A FedAvg variant as a strategy: Coordinator(job, options), FedAvg's worker (or Worker). The
// coordinator is assembled as it is made, so a variant whose parts do not compose is refused
// before the job starts.
template <class Coordinator, class Options = FedAvgOptions, class Worker = FedAvgWorker>
StrategyInfo variant(std::string name, std::string description) {
  StrategyInfo info = make_strategy<Coordinator, Worker, Options>(std::move(name), std::move(description));
  info.make_coordinator = [make = std::move(info.make_coordinator)](const Job& job) {
    std::unique_ptr<CoordinatorStrategy> c = make(job);
    static_cast<FedAvgCoordinator&>(*c).assemble();
    return c;
  };
  return info;
}

}  // namespace fedra::fedavg
