// FedAvg (McMahan et al. 2017): workers train locally, the coordinator averages the models
// weighted by each worker's example count.
//
// Per round the coordinator samples workers (fraction, minimum, seeded), sends each its own
// "fedavg.fit" instruction (the global model plus local_epochs, local_steps, batch_size, lr,
// optimizer, momentum, weight_decay and a per-worker seed), and folds each "fedavg.fit_result"
// into a running weighted sum as it arrives, so the coordinator holds one model-sized sum however
// many workers take part. A result is rejected (becomes a failure) if its tensors do not match the
// model's names, shapes and dtypes, if any value is NaN or infinite, or if it reports no
// examples. The round fails, keeping the previous model, if fewer than min_results results were
// accepted. The coordinator evaluates the global model on its test set every eval_every rounds.
// The worker's optimiser is created afresh each round (the FedAvg convention).
#pragma once

#include <cstdint>
#include <string>

#include "core/aggregation.h"
#include "core/message.h"
#include "core/options.h"
#include "core/registry.h"

namespace fedra::fedavg {

inline constexpr const char* kFit = "fedavg.fit";
inline constexpr const char* kFitResult = "fedavg.fit_result";

struct FedAvgOptions {
  FEDRA_ARG(int64_t, rounds) = 10;
  FEDRA_ARG(double, fraction) = 1.0;
  FEDRA_ARG(int64_t, min_workers) = 1;
  FEDRA_ARG(int64_t, min_results) = 1;
  FEDRA_ARG(int64_t, local_epochs) = 1;
  FEDRA_ARG(int64_t, local_steps) = 0;
  FEDRA_ARG(int64_t, batch_size) = 32;
  FEDRA_ARG(double, lr) = 0.05;
  FEDRA_ARG(std::string, optimizer) = "sgd";
  FEDRA_ARG(double, momentum) = 0.9;
  FEDRA_ARG(double, weight_decay) = 0.0;
  FEDRA_ARG(double, round_timeout) = 600;
  FEDRA_ARG(int64_t, eval_every) = 1;

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
    f("lr", lr_, "local learning rate");
    f("optimizer", optimizer_, "local optimiser: sgd (with momentum) or adam");
    f("momentum", momentum_, "SGD momentum");
    f("weight_decay", weight_decay_, "L2 weight decay");
    f("round_timeout", round_timeout_, "seconds a round waits for results before failing stragglers");
    f("eval_every", eval_every_, "evaluate on the coordinator's test set every N rounds; 0 = never");
  }
  void validate() const;
};

StrategyInfo fedavg_strategy();

}  // namespace fedra::fedavg
