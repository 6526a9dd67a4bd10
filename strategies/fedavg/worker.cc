// FedAvg's worker half.
#include <chrono>
#include <limits>
#include <map>
#include <set>

#include <torch/torch.h>

#include "core/data/tensor_checks.h"
#include "core/model/model.h"
#include "core/model/script_model.h"
#include "core/training/training.h"
#include "strategies/fedavg/fedavg.h"

namespace fedra::fedavg {

FedAvgWorker::FedAvgWorker(const Job& job) : job_(job) {
  check_loss_name(job.loss);
  model_ = build_model(job.model, job.seed);
}

// Tests only (FedAvgTesting): corrupts the trained weights as the coordinator asked.
void FedAvgWorker::attack(const FitIns& ins, NamedTensors& weights) const {
  torch::NoGradGuard no_grad;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(ins.seed ^ 0x5eedULL);
  for (size_t i = 0; i < weights.size(); ++i) {
    at::Tensor& w = weights[i].second;
    if (!w.is_floating_point()) continue;
    const at::Tensor& g = ins.weights[i].second;
    switch (ins.attack) {
      case Attack::kSignFlip: w = g - ins.attack_scale * (w - g); break;
      case Attack::kScale: w = g + ins.attack_scale * (w - g); break;
      case Attack::kNoise: w = w + ins.attack_scale * at::randn(w.sizes(), gen, w.options()); break;
      case Attack::kNone: break;
    }
  }
}

Message FedAvgWorker::handle(const Message& request, WorkerContext& ctx, WorkerLink& link) {
  if (request.kind == kEvaluate) return evaluate(request, ctx);
  return fit(request, ctx, link);
}

Message FedAvgWorker::evaluate(const Message& request, WorkerContext& ctx) {
  FEDRA_REQUIRE(ctx.eval_data != nullptr && ctx.eval_data->size() > 0,
                "worker {} holds no data out for federated evaluation; start workers with --holdout F "
                "(e.g. 0.1) or set fedavg.fed_eval_every 0",
                ctx.name);
  load_model_state(*model_, request.tensors);
  const EvalStats s = evaluate_model(model_, *ctx.eval_data, job_.loss);
  EvaluateRes res;
  res.round = request.round;
  res.num_examples = s.examples;
  res.loss = s.loss;
  res.correct = s.correct;
  if (!s.class_examples.empty()) {
    res.counts.emplace_back("class_examples", at::tensor(s.class_examples, at::kLong));
    res.counts.emplace_back("class_correct", at::tensor(s.class_correct, at::kLong));
  }
  res.extra = evaluation_metrics(model_, *ctx.eval_data);
  return res.encode();
}

void FedAvgWorker::keep_local_batchnorm() {
  if (bn_.empty()) {  // the first round: the global ones; from now on, this worker's own
    const auto names = batchnorm_tensor_names(*model_);
    const std::set<std::string> wanted(names.begin(), names.end());
    for (const auto& [name, t] : model_state(*model_)) {
      if (wanted.count(name)) bn_.emplace_back(name, t);
    }
    return;
  }
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < bn_.size(); ++i) bn_[i].second.copy_(local_bn_[i]);
}

Message FedAvgWorker::fit(const Message& request, WorkerContext& ctx, WorkerLink& link) {
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  const FitIns ins = FitIns::decode(request);
  load_model_state(*model_, ins.weights);
  if (ins.local_bn) keep_local_batchnorm();
  const auto t_loaded = Clock::now();
  TrainOptions t;
  t.epochs = ins.local_epochs;
  t.max_steps = ins.local_steps;
  if (t.max_steps > 0 && t.epochs == 0) t.epochs = std::numeric_limits<int64_t>::max();
  t.batch_size = ins.batch_size;
  t.optim = OptimizerConfig::from(ins.optim);
  t.proximal_mu = ins.proximal_mu;
  t.loss = job_.loss;
  t.seed = ins.seed;
  FEDRA_REQUIRE(ctx.data != nullptr && ctx.data->size() > 0, "worker {} has no training data", ctx.name);
  if (ins.scaffold) {
    if (control_.empty()) {
      for (const auto& p : model_->named_parameters()) control_.emplace_back(p.key(), torch::zeros_like(p.value()));
    }
    check_layout(control_, ins.control);
    for (size_t i = 0; i < control_.size(); ++i) t.grad_correction.push_back(ins.control[i].second - control_[i].second);
  }
  const TrainStats s = train_local(model_, *ctx.data, t);
  if (ins.local_bn) {
    // FedBN: the next round starts from these batch norm tensors, whatever the global ones are.
    local_bn_.clear();
    for (const auto& bn : bn_) local_bn_.push_back(bn.second.clone());
  }
  // A simulated fleet on the wall clock: this device is slower and its link takes time.
  sleep_as_device(ins.sleep_factor, std::chrono::duration<double>(Clock::now() - t_loaded).count(), ins.net_s);
  const auto t_trained = Clock::now();
  FitRes res;
  res.round = request.round;
  res.weights = model_state(*model_);
  if (ins.scaffold && s.steps > 0) {
    // Option II: c_i+ = c_i - c + (x - y) / (K lr), x the global model, y the trained one, K steps.
    torch::NoGradGuard no_grad;
    const double scale = 1.0 / (static_cast<double>(s.steps) * t.optim.lr);
    std::map<std::string, const at::Tensor*> global;
    for (const auto& [name, x] : ins.weights) global[name] = &x;
    const auto trained = model_->named_parameters();
    for (size_t i = 0; i < control_.size(); ++i) {
      const std::string& name = control_[i].first;
      const at::Tensor& y = trained[name];
      const at::Tensor next = control_[i].second - ins.control[i].second + (*global.at(name) - y) * scale;
      res.delta_control.emplace_back(name, next - control_[i].second);
      control_[i].second = next;
    }
  } else if (ins.scaffold) {
    for (const auto& [name, c] : control_) res.delta_control.emplace_back(name, torch::zeros_like(c));
  }
  if (ins.dp_clip > 0) {
    check_layout(ins.weights, res.weights);
    at::Generator gen = dp_generator(static_cast<int64_t>(ins.dp_seed));
    res.dp_unclipped = clip_and_noise(ins.weights, res.weights, ins.dp_clip, ins.dp_noise_std, gen) <= ins.dp_clip;
  }
  if (ins.attack != Attack::kNone) attack(ins, res.weights);
  res.num_examples = ctx.data->size();
  res.train_loss = s.mean_loss;
  res.steps = s.steps;
  res.load_s = std::chrono::duration<double>(t_loaded - t0).count();
  res.train_s = std::chrono::duration<double>(t_trained - t_loaded).count();
  res.fit_s = std::chrono::duration<double>(Clock::now() - t0).count();
  if (ins.secagg.on) {
    // The update leaves this worker only masked, summed with the others' by the protocol.
    Message figures = res.encode();
    return secagg_worker(ins.secagg, request.round, ins.weights, res.weights, figures.metrics, ctx, link);
  }
  return res.encode();
}

}  // namespace fedra::fedavg
