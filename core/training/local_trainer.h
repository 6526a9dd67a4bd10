// Local training done by the user's own code instead of Fedra's loop (train_local): the seam a
// worker whose training step lives elsewhere (a Python worker, python/fedra) plugs into. Every
// strategy that trains locally (the FedAvg family, fedasync, fedbuff) calls train_on_worker(), so
// what it does around training (loading the global model, DP's clipping and noise, secure
// aggregation's masking, the checks) stays the same whoever trains.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include <torch/nn/modules/container/sequential.h>

#include "core/kit/strategy.h"
#include "core/training/training.h"

namespace fedra {

// What one local training did, as the trainer reports it.
struct LocalOutcome {
  TrainStats stats;          // mean_loss (the round's train_loss) and steps
  int64_t num_examples = 0;  // the update's weight in the average, > 0
  // The loop's own figures (a Python reply's metrics: accuracy, grad_norm, ...). FedAvg sends each
  // as "fit.NAME" and the round's line holds its example-weighted mean over the accepted updates.
  std::map<std::string, double> metrics;
};

// What a training request is about.
struct LocalRequest {
  const Job& job;
  const std::string& kind;  // the request's kind: "fedavg.fit", "async.train"
  uint32_t round = 0;
  const Dataset* data = nullptr;  // the worker's Fedra dataset; null or empty when it has none
};

class LocalTrainer {
 public:
  virtual ~LocalTrainer() = default;
  // Trains `model` (the global model loaded) in place as `options` ask. Throws Error to fail this
  // request (the worker replies with the reason and stays in the job).
  virtual LocalOutcome train(const LocalRequest& request, torch::nn::Sequential& model,
                             const TrainOptions& options) = 0;
  // Evaluates `model` (the global model loaded) on the user's own held-out data: for federated
  // evaluation on a worker with no Fedra held-out data (a worker with one evaluates there, as a
  // C++ worker does). examples > 0, loss and correct are what it needs; throws Error to fail the
  // request. The default refuses: this trainer does not evaluate.
  virtual EvalStats evaluate(const LocalRequest& request, torch::nn::Sequential& model);
};

// Local training on this worker: ctx.trainer's when it has one, otherwise Fedra's loop over
// ctx.data (which must hold examples), num_examples being their count.
LocalOutcome train_on_worker(WorkerContext& ctx, const std::string& kind, uint32_t round,
                             torch::nn::Sequential& model, const TrainOptions& options);

}  // namespace fedra
