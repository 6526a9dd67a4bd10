#include "core/training/training.h"

#include <cmath>
#include <limits>

#include <torch/torch.h>

#include "core/data/tensor_checks.h"
#include "core/kit/message.h"
#include "core/model/model.h"
#include "core/model/script_model.h"
#include "core/training/torch_optimizer.h"

namespace fedra {

void check_model_fits(const std::string& spec, uint64_t seed, const Dataset& data, const std::string& loss,
                      const std::string& where) {
  if (data.size() == 0) return;
  torch::nn::Sequential model = build_model(spec, seed);
  model->eval();
  torch::NoGradGuard no_grad;
  const at::Tensor x = data.inputs.narrow(0, 0, 1);
  const std::string hint = "change --model, or --dataset";
  at::Tensor out;
  try {
    out = model->forward(x);
  } catch (const Error& e) {  // a script's forward says what it was fed
    FEDRA_FAIL("{} (one example of {}); {}", e.what(), where, hint);
  } catch (const std::exception& e) {
    FEDRA_FAIL("model '{}' cannot take {}: one example is {} ({}); {}", spec, where, describe_tensor(x),
               torch_error_reason(e), hint);
  }
  if (is_torchscript(spec)) check_children_in_order(spec, x);
  if (loss == "ce" && data.num_classes > 0) {
    FEDRA_REQUIRE(out.dim() == 2 && out.size(1) >= data.num_classes,
                  "model '{}' gives {} for one example of {}, which has {} classes: its last layer needs {} "
                  "outputs; {}", spec, describe_tensor(out), where, data.num_classes, data.num_classes, hint);
  }
  // The loss against this example's target: a loss that does not fit the task says which does.
  try {
    (void)compute_loss(out, data.targets.narrow(0, 0, 1), loss);
  } catch (const Error& e) {
    FEDRA_FAIL("{} ({}); change --loss, --model or --dataset", e.what(), where);
  } catch (const std::exception& e) {
    FEDRA_FAIL("loss {} cannot compare the output {} of model '{}' with the target {} of {} ({}); change --loss, "
               "--model or --dataset", loss, describe_tensor(out), spec, describe_tensor(data.targets.narrow(0, 0, 1)),
               where, torch_error_reason(e));
  }
}

void check_loss_name(const std::string& loss) {
  FEDRA_REQUIRE(loss == "ce" || loss == "bce" || loss == "psl" || loss == "psl2" || loss == "mse" || loss == "l1",
                "unknown loss '{}'; use ce, bce, mse, l1, psl or psl2", loss);
}

bool is_regression_loss(const std::string& loss) { return loss == "mse" || loss == "l1"; }

std::vector<std::pair<std::string, double>> eval_metrics(const EvalStats& s, const std::string& prefix) {
  if (s.regression) return {{prefix + "mae", s.mae}, {prefix + "rmse", s.rmse}, {prefix + "loss", s.loss}};
  return {{prefix + "accuracy", s.accuracy}, {prefix + "loss", s.loss}};
}

void check_optimizer_name(const std::string& optimizer) {
  FEDRA_REQUIRE(optimizer == "sgd" || optimizer == "adam",
                "unknown optimizer '{}'; use sgd or adam", optimizer);
}

namespace {

// Regression and multi-label targets in the model's output shape: [N] targets for [N, 1] outputs.
at::Tensor shaped_targets(const at::Tensor& out, const at::Tensor& targets, const std::string& loss) {
  FEDRA_REQUIRE(at::isFloatingType(targets.scalar_type()),
                "loss {} needs real-valued targets, and the data has class labels ({}); use --loss ce for classes",
                loss, describe_tensor(targets));
  at::Tensor y = targets.to(out.scalar_type());
  if (y.dim() == 1 && out.dim() == 2 && out.size(1) == 1) y = y.reshape({-1, 1});
  FEDRA_REQUIRE(y.sizes() == out.sizes(), "loss {}: the model gives {} for targets {}; its output must have the "
                "targets' shape", loss, describe_tensor(out), describe_tensor(targets));
  return y;
}

}  // namespace

at::Tensor compute_loss(const at::Tensor& logits, const at::Tensor& targets, const std::string& loss) {
  if (loss == "ce") {
    FEDRA_REQUIRE(!at::isFloatingType(targets.scalar_type()),
                  "loss ce needs class labels, and the data has real-valued targets ({}); use --loss mse or l1 for "
                  "regression, bce for multi-label 0/1 targets", describe_tensor(targets));
    return torch::nn::functional::cross_entropy(logits, targets);
  }
  if (loss == "mse") return torch::mse_loss(logits, shaped_targets(logits, targets, loss));
  if (loss == "l1") return torch::l1_loss(logits, shaped_targets(logits, targets, loss));
  if (loss == "bce" && at::isFloatingType(targets.scalar_type())) {  // multi-label: [N, K] 0/1 targets
    return torch::binary_cross_entropy_with_logits(logits, shaped_targets(logits, targets, loss));
  }
  if (loss == "bce") {
    FEDRA_REQUIRE(logits.dim() == 2 && logits.size(1) == 1,
                  "loss bce needs a model with one output, this one gives {}",
                  describe_tensor(logits));
    return torch::binary_cross_entropy_with_logits(logits, targets.to(logits.dtype()).reshape({-1, 1}));
  }
  if (loss == "psl" || loss == "psl2") {
    FEDRA_REQUIRE(logits.dim() == 2 && targets.dim() == 1 && targets.size(0) == logits.size(0),
                  "loss {} needs scores [batch, classes] and class targets, got {} and {}", loss,
                  describe_tensor(logits), describe_tensor(targets));
    return psl_loss(logits, targets, loss == "psl2");
  }
  check_loss_name(loss);
  return {};
}

at::Tensor psl_loss(const at::Tensor& scores, const at::Tensor& targets, bool squared) {
  // exp(p * (s_j - s_y)) for every j, the j == y terms (exp(0) = 1) masked out, not subtracted.
  const at::Tensor sy = scores.gather(1, targets.reshape({-1, 1}));
  at::Tensor terms = ((scores - sy) * (squared ? 2.0 : 1.0)).exp();
  terms = terms.masked_fill(torch::one_hot(targets, scores.size(1)).to(at::kBool), 0.0);
  return terms.sum() / static_cast<double>(std::max<int64_t>(1, scores.size(0)));
}

namespace {

// 1 where the prediction is right: the class (ce, psl), the 0/1 label (bce), or for multi-label
// targets [N, K] every label of the example.
at::Tensor hits(const at::Tensor& logits, const at::Tensor& y, const std::string& loss) {
  if (loss == "bce" && at::isFloatingType(y.scalar_type())) {
    const at::Tensor right = (logits > 0).eq(y.reshape(logits.sizes()) > 0.5);
    return right.dim() > 1 ? right.all(1) : right;
  }
  return (loss == "bce" ? (logits.reshape({-1}) > 0).to(at::kLong) : logits.argmax(1)).eq(y);
}

}  // namespace

std::unique_ptr<torch::optim::Optimizer> make_torch_optimizer(std::vector<at::Tensor> params,
                                                              const OptimizerConfig& c) {
  check_optimizer_name(c.name);
  if (c.name == "adam") {
    return std::make_unique<torch::optim::Adam>(
        std::move(params),
        torch::optim::AdamOptions(c.lr).betas({c.beta1, c.beta2}).eps(c.eps).weight_decay(c.weight_decay));
  }
  return std::make_unique<torch::optim::SGD>(
      std::move(params), torch::optim::SGDOptions(c.lr).momentum(c.momentum).weight_decay(c.weight_decay));
}

TrainOptions train_options(const LocalTrainingOptions& o, const std::string& loss, uint64_t seed) {
  TrainOptions t;
  t.epochs = o.local_epochs();
  t.max_steps = o.local_steps();
  if (t.max_steps > 0 && t.epochs == 0) t.epochs = std::numeric_limits<int64_t>::max();
  t.batch_size = o.batch_size();
  t.optim = OptimizerConfig::from(o.optim());
  t.proximal_mu = o.proximal_mu();
  t.loss = loss;
  t.seed = seed;
  return t;
}

TrainStats train_local(torch::nn::Sequential& model, const Dataset& data, const TrainOptions& o) {
  FEDRA_REQUIRE(o.batch_size > 0, "batch size must be > 0, got {}", o.batch_size);
  FEDRA_REQUIRE(o.epochs >= 0 && o.max_steps >= 0, "epochs and max_steps must be >= 0");
  check_loss_name(o.loss);
  TrainStats stats;
  const int64_t n = data.size();
  if (n == 0) return stats;
  model->train();
  auto optimizer = make_torch_optimizer(model->parameters(), o.optim);
  FEDRA_REQUIRE(o.proximal_mu >= 0, "proximal_mu must be >= 0, got {}", o.proximal_mu);
  std::vector<at::Tensor> params, start;  // FedProx's anchor: the weights training starts from
  if (o.proximal_mu > 0) {
    for (const auto& p : model->parameters()) {
      params.push_back(p);
      start.push_back(p.detach().clone());
    }
  }
  auto gen = at::make_generator<at::CPUGeneratorImpl>(o.seed);
  // A model's own random draws in training (dropout) come from torch's global generator: seeded
  // here, they are reproducible from the round's seed (with one client per process; virtual
  // clients on threads share the generator, so their draws interleave).
  torch::manual_seed(o.seed);
  double loss_sum = 0;
  for (int64_t epoch = 0; epoch < o.epochs; ++epoch) {
    at::Tensor perm = torch::randperm(n, gen, torch::kLong);
    for (int64_t begin = 0; begin < n; begin += o.batch_size) {
      if (o.max_steps > 0 && stats.steps >= o.max_steps) break;
      at::Tensor idx = perm.slice(0, begin, std::min(n, begin + o.batch_size));
      at::Tensor x = data.inputs.index_select(0, idx);
      at::Tensor y = data.targets.index_select(0, idx);
      optimizer->zero_grad();
      at::Tensor loss = compute_loss(model->forward(x), y, o.loss);
      loss.backward();
      if (!o.grad_correction.empty()) {
        torch::NoGradGuard no_grad;
        auto params_now = model->parameters();
        FEDRA_REQUIRE(params_now.size() == o.grad_correction.size(), "grad_correction has {} tensors for {} parameters",
                      o.grad_correction.size(), params_now.size());
        for (size_t i = 0; i < params_now.size(); ++i) {
          if (params_now[i].grad().defined()) params_now[i].mutable_grad().add_(o.grad_correction[i]);
        }
      }
      if (o.proximal_mu > 0) {
        torch::NoGradGuard no_grad;
        for (size_t i = 0; i < params.size(); ++i) {
          if (params[i].grad().defined()) params[i].mutable_grad().add_(params[i] - start[i], o.proximal_mu);
        }
      }
      optimizer->step();
      loss_sum += loss.item<double>() * static_cast<double>(idx.size(0));
      stats.examples += idx.size(0);
      ++stats.steps;
    }
    if (o.max_steps > 0 && stats.steps >= o.max_steps) break;
  }
  stats.mean_loss = stats.examples > 0 ? loss_sum / static_cast<double>(stats.examples) : 0.0;
  return stats;
}

EvalStats evaluate_model(torch::nn::Sequential& model, const Dataset& data, const std::string& loss,
                         int64_t batch_size) {
  torch::NoGradGuard no_grad;
  model->eval();
  EvalStats s;
  double loss_sum = 0;
  const int64_t classes = data.num_classes > 0 ? data.num_classes : 0;
  at::Tensor class_examples = at::zeros({classes}, at::kLong), class_correct = at::zeros({classes}, at::kLong);
  double abs_sum = 0, sq_sum = 0;  // regression: errors over every output value
  int64_t values = 0;
  for (int64_t begin = 0; begin < data.size(); begin += batch_size) {
    const int64_t end = std::min(data.size(), begin + batch_size);
    at::Tensor x = data.inputs.slice(0, begin, end);
    at::Tensor y = data.targets.slice(0, begin, end);
    at::Tensor logits;
    try {
      logits = model->forward(x);
    } catch (const c10::Error& e) {
      model->train();
      FEDRA_FAIL("cannot evaluate the model on the test set: its examples are {} and the model rejects them ({}); "
                 "give test data that fits the model (--test-data)", describe_tensor(x), e.what_without_backtrace());
    }
    loss_sum += compute_loss(logits, y, loss).item<double>() * static_cast<double>(end - begin);
    s.examples += end - begin;
    if (is_regression_loss(loss)) {
      const at::Tensor err = (logits - shaped_targets(logits, y, loss)).to(at::kDouble);
      abs_sum += err.abs().sum().item<double>();
      sq_sum += err.square().sum().item<double>();
      values += err.numel();
      continue;
    }
    const at::Tensor hit = hits(logits, y, loss);
    s.correct += hit.sum().item<int64_t>();
    if (classes > 0 && y.scalar_type() == at::kLong) {
      class_examples += at::bincount(y, {}, classes).narrow(0, 0, classes);
      class_correct += at::bincount(y.masked_select(hit), {}, classes).narrow(0, 0, classes);
    }
  }
  model->train();
  if (s.examples > 0) {
    s.loss = loss_sum / static_cast<double>(s.examples);
    s.accuracy = static_cast<double>(s.correct) / static_cast<double>(s.examples);
  }
  s.regression = is_regression_loss(loss);
  if (values > 0) {
    s.mae = abs_sum / static_cast<double>(values);
    s.rmse = std::sqrt(sq_sum / static_cast<double>(values));
  }
  if (classes > 0 && class_examples.sum().item<int64_t>() == s.examples) {
    s.class_examples.assign(class_examples.data_ptr<int64_t>(), class_examples.data_ptr<int64_t>() + classes);
    s.class_correct.assign(class_correct.data_ptr<int64_t>(), class_correct.data_ptr<int64_t>() + classes);
  }
  return s;
}

}  // namespace fedra
