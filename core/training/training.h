// Local training and evaluation loops shared by the strategies.
//
// Losses by name: "ce" (softmax cross-entropy over logits, int64 class targets); "bce" (sigmoid
// binary cross-entropy computed stably from logits, the value of PyTorch's BCEWithLogitsLoss: a
// one-output model with 0/1 class targets, or multi-label: float 0/1 targets [N, K] for K
// outputs); "mse" and "l1" (regression: float targets [N] for one output, or [N, K]; the mean
// over every value, as PyTorch's MSELoss and L1Loss); "psl" and "psl2" (the partially separable
// element loss of PSL.md and its squared variant, for class-score models).
//
// Evaluation: accuracy for classes (multi-label: an example counts when every label is right),
// MAE and RMSE over every output value for mse and l1.
//
// train_local() makes a fresh optimiser each call (FedAvg's convention: optimiser state does not
// cross rounds), shuffles with a generator seeded from options.seed (torch.randperm per epoch),
// seeds torch's global generator (dropout's draws) with options.seed too, and runs `epochs` passes or
// `max_steps` steps, whichever ends first (max_steps = 0 means no cap).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/nn/modules/container/sequential.h>

#include "core/data/dataset.h"
#include "core/training/optimizer.h"

namespace fedra {

struct TrainOptions {
  int64_t epochs = 1;
  int64_t max_steps = 0;
  int64_t batch_size = 32;
  OptimizerConfig optim;  // sgd, lr 0.01, no momentum or weight decay unless set
  // FedProx: adds mu/2 * ||w - w_start||^2 to the loss, w_start the weights train_local began
  // with (its gradient mu * (w - w_start) is added after backward); 0 leaves training untouched.
  double proximal_mu = 0;
  // Added to each parameter's gradient after backward (SCAFFOLD's c - c_i), in the order of
  // model->parameters(); empty: nothing added.
  std::vector<at::Tensor> grad_correction;
  std::string loss = "ce";
  uint64_t seed = 1;
};

// What local training does for the option group every locally-training scheme shares: the
// epochs (with only local_steps set, as many as the cap needs), the steps' cap, the batches, the
// optimiser and FedProx's term; `loss` and `seed` as the job and the round say.
TrainOptions train_options(const LocalTrainingOptions& o, const std::string& loss, uint64_t seed);

struct TrainStats {
  double mean_loss = 0;
  int64_t steps = 0;
  int64_t examples = 0;  // examples processed (counting repeats over epochs)
};

struct EvalStats {
  double loss = 0;
  double accuracy = 0;
  int64_t examples = 0;
  int64_t correct = 0;
  // Per class (when the data says how many classes it has): examples and correct predictions.
  std::vector<int64_t> class_examples, class_correct;
  bool regression = false;  // mse, l1: mae and rmse are the scores, accuracy is meaningless
  double mae = 0, rmse = 0;
};

bool is_regression_loss(const std::string& loss);
// The scores of an evaluation for a metrics line: PREFIXaccuracy and PREFIXloss, or for regression
// PREFIXmae, PREFIXrmse and PREFIXloss.
std::vector<std::pair<std::string, double>> eval_metrics(const EvalStats& s, const std::string& prefix = "test_");

void check_loss_name(const std::string& loss);

// Before any training: one example of `data` through the model of `spec` (evaluation mode, no
// gradient). Throws Error, one line naming the model, the example's shape, what went wrong and
// the options to change (--model, --dataset), if the model cannot take it, or if with loss "ce"
// it has fewer outputs than the data has classes. `where` names the data ("worker-1's data").
void check_model_fits(const std::string& spec, uint64_t seed, const Dataset& data, const std::string& loss,
                      const std::string& where);
void check_optimizer_name(const std::string& optimizer);
at::Tensor compute_loss(const at::Tensor& logits, const at::Tensor& targets, const std::string& loss);
// The partially separable loss (docs/strategies.md#psl): mean over the batch of
// sum_{j != y} exp(s_j - s_y) ("psl"), or of exp(2 (s_j - s_y)) ("psl2", squared = true).
at::Tensor psl_loss(const at::Tensor& scores, const at::Tensor& targets, bool squared);

TrainStats train_local(torch::nn::Sequential& model, const Dataset& data, const TrainOptions& options);
EvalStats evaluate_model(torch::nn::Sequential& model, const Dataset& data, const std::string& loss,
                         int64_t batch_size = 1000);

}  // namespace fedra
