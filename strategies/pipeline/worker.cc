// pipeline's worker half.
#include "strategies/pipeline/internal.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <deque>
#include <map>
#include <optional>

#include <fmt/ranges.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "core/batching.h"
#include "core/cohort.h"
#include "core/inbox.h"
#include "core/model.h"
#include "core/optimizer.h"
#include "core/tensor_checks.h"
#include "core/training.h"
#include "strategies/model_parallel.h"
#include "strategies/run_message.h"

namespace fedra::pipeline {

namespace {

using Seconds = std::chrono::duration<double>;

class PipelineWorker : public WorkerStrategy {
 public:
  PipelineWorker(const Job& job, PipelineOptions options) : job_(job), o_(std::move(options)) {
    check_loss_name(job.loss);
  }

  Message handle(const Message& request, WorkerContext& ctx, WorkerLink& link) override {
    const RunIns run = RunIns::decode(request, kRun);
    link_ = &link;
    stage_ = run.rank;
    const int64_t n = o_.stages();
    FEDRA_REQUIRE(run.world == n, "pipeline: stage {} of {} does not fit pipeline.stages = {}", stage_, run.world, n);
    if (stage_ != built_stage_) {
      // Only this stage's layers are kept: the rest of the network is freed with `stages`.
      const auto stages = cut_stages(build_model(job_.model, job_.seed), n, o_.cuts());
      stage_model_ = stages[static_cast<size_t>(stage_)];
      built_stage_ = stage_;
    }
    last_ = stage_ == n - 1;
    if (stage_ == 0) {
      FEDRA_REQUIRE(ctx.data != nullptr && ctx.data->size() > 0, "worker {} (stage 0) has no training data", ctx.name);
      if (!batches_) batches_.emplace(enum_name(o_.schedule().batches()), o_.schedule().batch_size(), job_.seed, ctx.name, 0);
    }
    data_ = ctx.data;
    load(run);
    const int64_t first = run.first;
    const int64_t count = run.steps;
    timeout_ = o_.schedule().step_timeout_ms();
    inbox_.clear();
    saved_.clear();
    compute_s_ = wait_s_ = 0;
    losses_ = at::zeros({count}, at::kDouble);
    examples_ = at::zeros({count}, at::kLong);
    first_ = first;

    const auto t0 = Clock::now();
    const int64_t warm = std::min(count, warmup_forwards(stage_, n, o_.effective_in_flight()));
    int64_t next = 0;
    for (; next < warm; ++next) forward(first + next);
    if (last_) {
      for (; next < count; ++next) forward(first + next);
    } else {
      for (int64_t j = 0; j < count; ++j) {
        backward(first + j);
        if (next < count) forward(first + next++);
      }
    }
    compute_s_ = Seconds(Clock::now() - t0).count() - wait_s_;

    Message done(kDone, request.round);
    append_params_and_opt_state(done.tensors, parameters_of(stage()), optimizer_->state());
    if (last_) {
      done.tensors.emplace_back("loss", losses_);
      done.tensors.emplace_back("examples", examples_);
    }
    done.metrics["compute_s"] = compute_s_;
    done.metrics["wait_s"] = wait_s_;
    return done;
  }

 private:
  torch::nn::Sequential& stage() { return stage_model_; }

  void load(const RunIns& run) {
    const NamedTensors& params = run.params;
    const NamedTensors& opt = run.opt_state;
    load_model_state(*stage(), params);
    names_.clear();
    params_.clear();
    std::vector<at::Tensor> views;
    for (const auto& p : stage()->named_parameters()) {
      names_.push_back(p.key());
      params_.push_back(p.value());
      views.push_back(p.value().detach());
    }
    optimizer_.emplace(OptimizerConfig::from(o_.optim()), names_, views);
    if (!opt.empty()) optimizer_->load_state(opt);
  }

  // The coordinator's message of `kind` for micro-batch `step`; others arriving first wait.
  Message await(const char* kind, int64_t step) {
    const auto limit = static_cast<size_t>(4 * o_.effective_in_flight() + 8);
    return inbox_.await(
        *link_, timeout_, [&](const Message& m) { return m.kind == kind && static_cast<int64_t>(m.step) == step; },
        [&](const Message& m) {
          FEDRA_REQUIRE((m.kind == kAct || m.kind == kGrad) && inbox_.size() < limit,
                        "pipeline stage {}: waiting for '{}' of micro-batch {}, got '{}' of micro-batch {}", stage_,
                        kind, step, m.kind, m.step);
        },
        wait_s_);
  }

  void send(const char* kind, int64_t step, NamedTensors tensors) {
    Message m(kind);
    m.step = static_cast<uint64_t>(step);
    m.tensors = std::move(tensors);
    link_->send(m);
  }

  at::Tensor run_stage(const at::Tensor& input, int64_t step) {
    try {
      return stage()->forward(input);
    } catch (const c10::Error& e) {
      FEDRA_FAIL("pipeline stage {} cannot run micro-batch {} of {}: {}", stage_, step, describe_tensor(input),
                 e.what_without_backtrace());
    }
  }

  std::vector<at::Tensor> snapshot() const {
    std::vector<at::Tensor> copy;
    for (const auto& p : params_) copy.push_back(p.detach().clone());
    return copy;
  }

  void restore(const std::vector<at::Tensor>& values) {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < params_.size(); ++i) params_[i].copy_(values[i]);
  }

  void apply_gradients() {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < params_.size(); ++i) {
      const at::Tensor& g = params_[i].grad();
      optimizer_->step(i, g.defined() ? g : at::zeros_like(params_[i]));
      params_[i].mutable_grad() = at::Tensor();
    }
  }

  void forward(int64_t step) {
    at::Tensor input, target;
    if (stage_ == 0) {
      auto [x, y] = batches_->batch(*data_, step);
      input = x.contiguous();
      target = y.contiguous();
    } else {
      Message m = await(kAct, step);
      input = m.tensor("act");
      target = m.tensor("target");
    }
    if (last_) {  // forward, loss and backward back to back
      at::Tensor in = stage_ > 0 ? input.detach().requires_grad_() : input;
      at::Tensor loss = compute_loss(run_stage(in, step), target, job_.loss);
      loss.backward();
      if (stage_ > 0) send(kGrad, step, {{"grad", in.grad()}});
      apply_gradients();
      const int64_t rows = input.size(0);
      losses_[step - first_] = rows > 0 ? loss.item<double>() : 0.0;
      examples_[step - first_] = rows;
      return;
    }
    Saved saved{input, target, {}};
    if (o_.stash()) saved.weights = snapshot();
    at::Tensor out;
    {
      torch::NoGradGuard no_grad;
      out = run_stage(input, step);
    }
    if (step == o_.testing().inject_bad_shape() && stage_ == 0 && out.dim() == 2 && out.size(1) > 1) {
      spdlog::warn("inject_bad_shape: sending micro-batch {}'s activations one column short", step);
      out = out.narrow(1, 0, out.size(1) - 1);
    }
    send(kAct, step, {{"act", out.contiguous()}, {"target", target}});
    saved_.emplace(step, std::move(saved));
  }

  void backward(int64_t step) {
    Message m = await(kGrad, step);
    const at::Tensor& grad = m.tensor("grad");
    auto it = saved_.find(step);
    FEDRA_ASSERT(it != saved_.end(), "stage {} has no forward of micro-batch {}", stage_, step);
    Saved saved = std::move(it->second);
    saved_.erase(it);
    std::vector<at::Tensor> live;
    if (o_.stash()) {
      live = snapshot();
      restore(saved.weights);
    }
    at::Tensor in = stage_ > 0 ? saved.input.detach().requires_grad_() : saved.input;
    at::Tensor out = run_stage(in, step);
    FEDRA_REQUIRE(grad.sizes() == out.sizes(), "pipeline stage {}: the gradient of micro-batch {} is {}, its output {}",
                  stage_, step, describe_tensor(grad), describe_tensor(out));
    out.backward(grad);
    if (o_.stash()) restore(live);
    if (stage_ > 0) send(kGrad, step, {{"grad", in.grad()}});
    apply_gradients();
  }

  struct Saved {
    at::Tensor input, target;
    std::vector<at::Tensor> weights;  // with stash: the weights of this micro-batch's forward
  };

  Job job_;
  PipelineOptions o_;
  torch::nn::Sequential stage_model_{nullptr};  // this worker's stage (its weights come with each run)
  int64_t built_stage_ = -1;
  int64_t stage_ = 0;
  bool last_ = false;
  WorkerLink* link_ = nullptr;  // the link of the request being handled
  const Dataset* data_ = nullptr;
  std::optional<BatchOrder> batches_;
  std::vector<std::string> names_;
  std::vector<at::Tensor> params_;
  std::optional<ParamOptimizer> optimizer_;
  Inbox inbox_;
  std::map<int64_t, Saved> saved_;
  std::chrono::milliseconds timeout_{60000};
  at::Tensor losses_, examples_;
  int64_t first_ = 0;
  double compute_s_ = 0, wait_s_ = 0;
};

}  // namespace

std::unique_ptr<WorkerStrategy> new_worker(const Job& job, const PipelineOptions& options) {
  return std::make_unique<PipelineWorker>(job, options);
}

}  // namespace fedra::pipeline
