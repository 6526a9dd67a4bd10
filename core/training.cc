#include "core/training.h"

#include <torch/torch.h>

#include "core/message.h"
#include "core/model.h"
#include "core/script_model.h"
#include "core/tensor_checks.h"

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
}

void check_loss_name(const std::string& loss) {
  FEDRA_REQUIRE(loss == "ce" || loss == "bce" || loss == "psl" || loss == "psl2",
                "unknown loss '{}'; use ce, bce, psl or psl2", loss);
}

void check_optimizer_name(const std::string& optimizer) {
  FEDRA_REQUIRE(optimizer == "sgd" || optimizer == "adam",
                "unknown optimizer '{}'; use sgd or adam", optimizer);
}

at::Tensor compute_loss(const at::Tensor& logits, const at::Tensor& targets, const std::string& loss) {
  if (loss == "ce") return torch::nn::functional::cross_entropy(logits, targets);
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

std::unique_ptr<torch::optim::Optimizer> make_optimizer(torch::nn::Sequential& model,
                                                        const TrainOptions& o) {
  const OptimizerConfig& c = o.optim;
  check_optimizer_name(c.name);
  if (c.name == "adam") {
    return std::make_unique<torch::optim::Adam>(
        model->parameters(),
        torch::optim::AdamOptions(c.lr).betas({c.beta1, c.beta2}).eps(c.eps).weight_decay(c.weight_decay));
  }
  return std::make_unique<torch::optim::SGD>(
      model->parameters(), torch::optim::SGDOptions(c.lr).momentum(c.momentum).weight_decay(c.weight_decay));
}

at::Tensor predict(const at::Tensor& logits, const std::string& loss) {
  return loss == "bce" ? (logits.reshape({-1}) > 0).to(at::kLong) : logits.argmax(1);
}

}  // namespace

TrainStats train_local(torch::nn::Sequential& model, const Dataset& data, const TrainOptions& o) {
  FEDRA_REQUIRE(o.batch_size > 0, "batch size must be > 0, got {}", o.batch_size);
  FEDRA_REQUIRE(o.epochs >= 0 && o.max_steps >= 0, "epochs and max_steps must be >= 0");
  check_loss_name(o.loss);
  TrainStats stats;
  const int64_t n = data.size();
  if (n == 0) return stats;
  model->train();
  auto optimizer = make_optimizer(model, o);
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
    const at::Tensor hit = predict(logits, loss).eq(y);
    s.correct += hit.sum().item<int64_t>();
    if (classes > 0 && y.scalar_type() == at::kLong) {
      class_examples += at::bincount(y, {}, classes).narrow(0, 0, classes);
      class_correct += at::bincount(y.masked_select(hit), {}, classes).narrow(0, 0, classes);
    }
    s.examples += end - begin;
  }
  model->train();
  if (s.examples > 0) {
    s.loss = loss_sum / static_cast<double>(s.examples);
    s.accuracy = static_cast<double>(s.correct) / static_cast<double>(s.examples);
  }
  if (classes > 0 && class_examples.sum().item<int64_t>() == s.examples) {
    s.class_examples.assign(class_examples.data_ptr<int64_t>(), class_examples.data_ptr<int64_t>() + classes);
    s.class_correct.assign(class_correct.data_ptr<int64_t>(), class_correct.data_ptr<int64_t>() + classes);
  }
  return s;
}

}  // namespace fedra
