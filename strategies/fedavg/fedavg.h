// FedAvg (McMahan et al. 2017): workers train locally, the coordinator averages the models
// weighted by each worker's example count.
//
// Per round the coordinator samples workers (fraction, minimum, seeded), sends each its own
// FitIns ("fedavg.fit": the global model, the local training settings and a per-worker seed),
// and folds each FitRes ("fedavg.fit_result") into a running weighted sum as it arrives, so the
// coordinator holds one model-sized sum however many workers take part. A result is rejected
// (becomes a failure) if a required field is missing, if its tensors do not match the model's
// names, shapes and dtypes, or if any value is NaN or infinite. The round fails, keeping the
// previous model, if fewer than min_results results were accepted. The worker's optimiser is
// created afresh each round (the FedAvg convention).
//
// FedAvgCoordinator is exported to be subclassed: an aggregation variant (a robust mean, server
// momentum, ...) overrides accumulate()/aggregate() and server_update() and keeps everything
// else, FedAvg's worker half included (examples/plugins: fedmedian, fedavgm; docs/plugins.md).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <torch/nn/modules/container/sequential.h>

#include "core/data/dataset.h"
#include "core/federated/aggregation.h"
#include "core/federated/fleet.h"
#include "core/federated/privacy.h"
#include "core/federated/robust_aggregation.h"
#include "core/federated/server_optimizer.h"
#include "core/kit/message.h"
#include "core/kit/option_groups.h"
#include "core/kit/registry.h"
#include "core/loops/round_strategy.h"
#include "strategies/fedavg/secagg.h"

namespace fedra::fedavg {

inline constexpr const char* kFit = "fedavg.fit";
inline constexpr const char* kFitResult = "fedavg.fit_result";
inline constexpr const char* kEvaluate = "fedavg.evaluate";
inline constexpr const char* kEvaluateResult = "fedavg.evaluate_result";
// SCAFFOLD's control variates travel beside the model under these prefixes.
inline constexpr const char* kControlPrefix = "scaffold.c/";         // fedavg.fit: the server's c
inline constexpr const char* kDeltaControlPrefix = "scaffold.dc/";   // fit_result: the worker's delta c_i
inline constexpr const char* kControlStatePrefix = "scaffold/c/";    // the checkpoint's c

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

struct FedAvgOptions {
  FEDRA_ARG(int64_t, rounds) = 10;
  FEDRA_ARG(double, fraction) = 1.0;
  FEDRA_ARG(int64_t, min_workers) = 1;
  FEDRA_ARG(int64_t, min_results) = 1;
  FEDRA_ARG(int64_t, local_epochs) = 1;
  FEDRA_ARG(int64_t, local_steps) = 0;
  FEDRA_ARG(int64_t, batch_size) = 32;
  FEDRA_ARG(OptimizerOptions, optim) = OptimizerOptions().momentum(0.9);
  FEDRA_ARG(double, proximal_mu) = 0;
  FEDRA_ARG(bool, scaffold) = false;
  FEDRA_ARG(bool, local_bn) = false;
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
    f("local_epochs", local_epochs_, "local passes over each worker's data per round");
    f("local_steps", local_steps_,
      "cap on local optimiser steps per round; 0 = no cap (with local_epochs 0 too: no training, "
      "to measure the framework alone)");
    f("batch_size", batch_size_, "local mini-batch size");
    f.group(optim_);
    f("proximal_mu", proximal_mu_,
      "FedProx (Li et al. 2020): workers add mu/2 * ||w - w_global||^2 to their local loss; 0 = FedAvg");
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
  void validate() const;
  RoundConfig round_config() const;
};

// fedavg.fit: what one worker trains with in one round. Defaults live here only.
struct FitIns {
  uint32_t round = 0;
  NamedTensors weights;  // the global model (shared with the coordinator's, not copied)
  int64_t local_epochs = 1;
  int64_t local_steps = 0;
  int64_t batch_size = 32;
  OptimizerOptions optim;
  double proximal_mu = 0;  // FedProx's mu; 0: plain local training
  bool scaffold = false;
  NamedTensors control;    // SCAFFOLD: the server's control variate c, one per parameter
  bool local_bn = false;   // FedBN: keep this worker's batch norm tensors from its last round
  // dp=client: clip the update to dp_clip and add N(0, dp_noise_std^2) per coordinate, noise drawn
  // with dp_seed (0: from the operating system). dp_clip 0: no DP on the worker.
  double dp_clip = 0, dp_noise_std = 0;
  uint64_t dp_seed = 0;
  uint64_t seed = 1;  // the worker's local shuffling
  Attack attack = Attack::kNone;  // tests only: how to corrupt the result (FedAvgTesting)
  double attack_scale = 0;
  SecAggIns secagg;  // secure aggregation: after training, the protocol instead of fit_result
  // A simulated fleet on the wall clock (core/fleet.h): after training, sleep sleep_factor times
  // the training time plus net_s.
  double sleep_factor = 0, net_s = 0;

  Message encode() const;
  // Refuses a message of another kind or one lacking a field, naming it.
  static FitIns decode(const Message& m);
};

// fedavg.fit_result: the trained model and what it was trained on.
struct FitRes {
  uint32_t round = 0;
  NamedTensors weights;
  NamedTensors delta_control;  // SCAFFOLD: c_i+ - c_i, one per parameter (empty otherwise)
  int64_t num_examples = 0;  // the weight of this result in the average
  double train_loss = 0;     // mean loss over the local steps
  int64_t steps = 0;
  double load_s = 0, train_s = 0, fit_s = 0;  // where the worker's time went
  int64_t dp_unclipped = -1;  // dp=client: 1 if the update was within the clip norm, else 0

  template <class F>
  void metrics(F&& f) {
    f("num_examples", num_examples, Field::kRequired);
    f("train_loss", train_loss, Field::kRequired);
    f("dp_unclipped", dp_unclipped);
    f("steps", steps);
    f("load_s", load_s);
    f("train_s", train_s);
    f("fit_s", fit_s);
  }
  Message encode() const;
  // Refuses another kind, another round, a missing or negative num_examples or a missing
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

 protected:
  // --- Override points for aggregation variants.
  // The instruction for one worker (default: the global model and the options' local settings).
  virtual FitIns configure(uint32_t round, const WorkerInfo& worker);
  // Takes one checked result (layout and finiteness already verified) as it arrives. Default:
  // adds it to the running example-weighted sum, so memory stays O(model). Throwing rejects it.
  virtual void accumulate(const WorkerInfo& worker, FitRes&& result);
  // The round's aggregate of the accepted results (default: the weighted mean). Called once per
  // round with at least min_results accepted.
  virtual NamedTensors aggregate(uint32_t round);
  // Turns the aggregate into the next global model (default: the server optimiser chosen by
  // server_opt steps on the pseudo-gradient global() - aggregate; with none, the aggregate is
  // the next global model).
  virtual void server_update(uint32_t round, NamedTensors aggregate);
  // Figures every round's line carries, failed rounds included (default: the privacy spent).
  Metrics standing_metrics(uint32_t round) override;
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
  RoundConfig round_config() const override { return options_.round_config(); }
  Message configure_fit(uint32_t round, const WorkerInfo& worker) override;
  // Under secagg the round is secure aggregation's exchange (strategies/fedavg/secagg.h).
  std::vector<Failure> run_fit(uint32_t round, Cohort& cohort, std::vector<Instruction> instructions,
                               Deadline deadline, size_t& accepted) override;
  void accumulate_fit(uint32_t round, const WorkerInfo& worker, Message&& result) override;
  Metrics aggregate_fit(uint32_t round, const std::vector<Failure>& failures) override;
  Metrics evaluate(uint32_t round, RunContext& ctx) override;
  // Federated evaluation (fed_eval_every): a sample of workers evaluates the global model on its
  // held-out data; the figures are example-weighted (fed_eval_* in metrics.jsonl).
  Metrics evaluate_federated(uint32_t round, uint32_t total, Cohort& cohort, RunContext& ctx) override;
  std::vector<WorkerId> select_workers(uint32_t round, Cohort& cohort, const RunContext& ctx) override;
  bool resumable() const override { return true; }
  // The global model, then the server optimiser's state ("server_opt/..." names) and SCAFFOLD's
  // control variate ("scaffold/c/...").
  NamedTensors checkpoint_state() const override;
  void restore(NamedTensors state) override;
  // The global model as OUT/model.bin (and OUT/model.pt for a TorchScript model).
  void finished(RunContext& ctx) override;

 private:
  void check_control(const WorkerInfo& worker, const NamedTensors& delta) const;  // SCAFFOLD
  void add_control(const NamedTensors& delta);
  NamedTensors dp_aggregate();  // DP-FedAvg's noised mean (options_.privacy())
  NamedTensors secagg_aggregate();  // global + the securely summed updates / their weight
  std::vector<Failure> run_secagg(uint32_t round, Cohort& cohort, std::vector<Instruction> instructions,
                                  Deadline deadline, size_t& accepted);

  Job job_;
  FedAvgOptions options_;
  torch::nn::Sequential model_{nullptr};
  NamedTensors global_;
  uint64_t model_bytes_ = 0;  // the global model's bytes (its layout never changes)
  ServerOptimizer server_;
  std::vector<NamedTensors> held_;  // a robust aggregate's updates this round
  WeightedAverage average_;
  // SCAFFOLD: the server's control variate c (per parameter), this round's sum of the workers'
  // delta c, and how many workers were connected when the round began (N in c += sum / N).
  NamedTensors control_;
  NamedTensors control_delta_sum_;
  size_t connected_ = 0, sampled_ = 0;
  std::string refusal_;  // why this round asked nobody (the hold budget), if it did not
  // Differential privacy (options_.privacy()): the clipped sum, the current clip norm C, the
  // updates within C this round, the accountant and the noise's generator.
  DpMean dp_mean_;
  double dp_clip_ = 0;
  double dp_unclipped_ = 0;
  double dp_last_unclipped_fraction_ = -1;
  RdpAccountant accountant_;
  at::Generator dp_gen_;
  // Secure aggregation: this round's result (sum of weighted updates, figures, dropouts).
  std::optional<SecAggRound::Result> secagg_;
  size_t accepted_ = 0;
  double loss_sum_ = 0, weight_sum_ = 0;
  int64_t examples_ = 0;
  // Where a round's time goes, reported in metrics.jsonl.
  double accumulate_s_ = 0, worker_load_s_ = 0, worker_train_s_ = 0;
  double fit_cpu_s_ = 0;  // the coordinator thread's CPU time in the round's fit exchange
  // A simulated fleet (options_.fleet()): the fleet's clock when the round began and at the last
  // round's end (virtual: simulated seconds; wall: since the first round), the longest accepted
  // update this round, the device seconds spent so far, and this round's late, lost and offline.
  std::shared_ptr<Fleet> fleet_;
  double fleet_now_ = 0, round_start_ = 0, round_span_ = 0, device_s_ = 0;
  std::map<std::string, double> round_device_;  // this round's device seconds by worker
  int64_t fleet_late_ = 0, fleet_lost_ = 0, fleet_offline_ = 0;
  std::chrono::steady_clock::time_point fleet_wall_start_;
  bool fleet_started_ = false;
  bool fleet_on() const;  // a fleet or a round deadline
  double fleet_time() const;
  void fleet_result(const WorkerInfo& worker, int64_t steps);  // throws for a late or lost update
};

// FedAvg's worker half: loads the global model, trains it locally as FitIns says, returns it.
// Reads nothing from the job's options, so every FedAvg variant reuses it as it is.
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

 private:
  Message fit(const Message& request, WorkerContext& ctx, WorkerLink& link);
  Message evaluate(const Message& request, WorkerContext& ctx);
  void attack(const FitIns& ins, NamedTensors& weights) const;
  void keep_local_batchnorm();

  Job job_;
  torch::nn::Sequential model_{nullptr};
  NamedTensors control_;  // SCAFFOLD: this worker's c_i, kept across rounds (zero at first)
  NamedTensors bn_;                    // FedBN: the model's batch norm tensors (its own storage)
  std::vector<at::Tensor> local_bn_;  // FedBN: copies of them after this worker's last round
};

StrategyInfo fedavg_strategy();

// A FedAvg variant as a strategy: Coordinator(job, options), FedAvg's worker (or Worker).
template <class Coordinator, class Options = FedAvgOptions, class Worker = FedAvgWorker>
StrategyInfo variant(std::string name, std::string description) {
  return make_strategy<Coordinator, Worker, Options>(std::move(name), std::move(description));
}

}  // namespace fedra::fedavg
