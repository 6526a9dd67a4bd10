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

#include "core/data/batching.h"
#include "core/data/tensor_checks.h"
#include "core/loops/cohort.h"
#include "core/loops/inbox.h"
#include "core/model/model.h"
#include "core/training/optimizer.h"
#include "core/training/training.h"
#include "strategies/model_parallel.h"
#include "strategies/run_message.h"

namespace fedra::pipeline {

namespace {

class PipelineWorker : public ModelParallelWorker {
 public:
  PipelineWorker(const Job& job, PipelineOptions options)
      : ModelParallelWorker(job, options.schedule(), options.optim(), "pipeline", /*closed=*/false),
        o_(std::move(options)) {}

  Message run_part(const Message& request, WorkerContext& ctx, WorkerLink& link) override {
    const RunIns run = begin(request, ctx, link, kRun);
    stage_ = run.rank;
    const int64_t n = o_.stages();
    FEDRA_REQUIRE(run.world == n, "pipeline: stage {} of {} does not fit pipeline.stages = {}", stage_, run.world, n);
    if (stage_ != built_stage_) {
      // Only this stage's layers are kept: the rest of the network is freed with `stages`.
      const auto stages = cut_stages(layered_model(job_.model, job_.seed), n, o_.cuts());
      stage_model_ = stages[static_cast<size_t>(stage_)];
      built_stage_ = stage_;
    }
    last_ = stage_ == n - 1;
    if (stage_ == 0) draw_batches(ctx, "stage 0");
    data_ = ctx.data;
    load(run);
    const int64_t first = run.first;
    const int64_t count = run.steps;
    inbox_.clear();
    saved_.clear();
    cut_shape_.clear();
    losses_ = at::zeros({count}, at::kDouble);
    examples_ = at::zeros({count}, at::kLong);
    first_ = first;

    const auto t0 = Clock::now();
    const int64_t warm = std::min(count, warmup_forwards(stage_, n, o_.effective_in_flight()));
    int64_t next = 0;
    for (; next < warm; ++next) forward(first + next);
    if (last_) {
      for (; next < count; ++next) {
        forward(first + next);
        heartbeat(first + next);
      }
    } else {
      for (int64_t j = 0; j < count; ++j) {
        backward(first + j);
        heartbeat(first + j);
        if (next < count) forward(first + next++);
      }
    }
    compute_s_ = Seconds(Clock::now() - t0).count() - wait_s_;

    NamedTensors extra = last_ ? NamedTensors{{"loss", losses_}, {"examples", examples_}} : NamedTensors{};
    for (const auto& b : stage()->named_buffers()) extra.emplace_back(b.key(), b.value());  // batch norm statistics
    Message reply = done(kDone, request.round, std::move(extra));
    reply.metrics["compute_s"] = compute_s_;
    reply.metrics["wait_s"] = wait_s_;
    return reply;
  }

 private:
  torch::nn::Sequential& stage() { return stage_model_; }

  void load(const RunIns& run) {
    load_model_state(*stage(), run.params);
    std::vector<std::string> names;
    std::vector<at::Tensor> params;
    for (const auto& p : stage()->named_parameters()) {
      names.push_back(p.key());
      params.push_back(p.value());
    }
    set_params(std::move(names), std::move(params), run.opt_state);
  }

  // The message of `kind` for micro-batch `step` (from the neighbouring stage, or relayed by the
  // coordinator); others arriving first wait.
  Message await(const char* kind, int64_t step) {
    const auto limit = static_cast<size_t>(4 * o_.effective_in_flight() + 8);
    if (linked()) {
      const bool act = kind == std::string(kAct);
      const std::string what = fmt::format("the {} of micro-batch {} from {}", act ? "activations" : "gradient", step,
                                           act ? peers().prev().name : peers().next().name);
      const int64_t end = first_ + losses_.size(0);
      return await_peer(
          [&](const Message& m) { return m.kind == kind && static_cast<int64_t>(m.step) == step; },
          [&](const Message& m) {
            const auto s = static_cast<int64_t>(m.step);
            FEDRA_REQUIRE((m.kind == kAct || m.kind == kGrad) && s >= first_ && s < end && peer_waiting() < limit,
                          "pipeline stage {}: waiting for {}, got '{}' of micro-batch {} from {} (this round: "
                          "micro-batches {}..{})", stage_, what, m.kind, m.step, m.sender, first_, end - 1);
          },
          what);
    }
    return inbox_.await(
        *link_, timeout_, [&](const Message& m) { return m.kind == kind && static_cast<int64_t>(m.step) == step; },
        [&](const Message& m) {
          FEDRA_REQUIRE((m.kind == kAct || m.kind == kGrad) && inbox_.size() < limit,
                        "pipeline stage {}: waiting for '{}' of micro-batch {}, got '{}' of micro-batch {}", stage_,
                        kind, step, m.kind, m.step);
        },
        wait_s_);
  }

  void send(const char* kind, int64_t step, at::Tensor t, at::Tensor target = {}) {
    Message m = StageTensor{static_cast<uint64_t>(step), std::move(t), std::move(target)}.encode(kind);
    if (!linked()) {
      link_->send(m);
    } else if (m.kind == kAct) {
      send_next(std::move(m));
    } else {
      send_prev(std::move(m));
    }
  }

  // Over direct links the receiving stage checks what the coordinator checks when it relays: the
  // cut's shape (from the round's first activations), matching targets, finite values.
  void check_received(const Message& m, const at::Tensor& t, const char* what, int64_t step) {
    if (!linked()) return;
    FEDRA_REQUIRE(t.dim() >= 1 && t.scalar_type() == at::kFloat, "{} sent {} {} for micro-batch {}", m.sender, what,
                  describe_tensor(t), step);
    if (m.kind == kAct) {  // a gradient is checked against this stage's output in backward()
      const std::vector<int64_t> shape(t.sizes().begin() + 1, t.sizes().end());
      if (cut_shape_.empty()) cut_shape_ = shape;
      FEDRA_REQUIRE(shape == cut_shape_, "{} sent {} {} for micro-batch {}; the cut after stage {} carries [batch, {}]",
                    m.sender, what, describe_tensor(t), step, stage_ - 1, fmt::join(cut_shape_, ", "));
      const at::Tensor& target = StageTensor::decode(m, kAct).target;
      FEDRA_REQUIRE(target.dim() >= 1 && target.size(0) == t.size(0), "{} sent {} activations with {} targets",
                    m.sender, describe_tensor(t), describe_tensor(target));
    }
    try {
      check_finite(m.tensors);
    } catch (const Error& e) {
      FEDRA_FAIL("{} sent {} for micro-batch {}: {}", m.sender, what, step, e.what());
    }
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

  void forward(int64_t step) {
    at::Tensor input, target;
    if (stage_ == 0) {
      auto [x, y] = batches_->batch(*data_, step);
      input = x.contiguous();
      target = y.contiguous();
    } else {
      Message m = await(kAct, step);
      const StageTensor act = StageTensor::decode(m, kAct);
      input = act.t;
      check_received(m, input, "activations", step);
      target = act.target;
    }
    if (last_) {  // forward, loss and backward back to back
      at::Tensor in = stage_ > 0 ? input.detach().requires_grad_() : input;
      at::Tensor loss = compute_loss(run_stage(in, step), target, job_.loss);
      loss.backward();
      if (stage_ > 0) send(kGrad, step, in.grad());
      apply_gradients();
      const int64_t rows = input.size(0);
      losses_[step - first_] = rows > 0 ? loss.item<double>() : 0.0;
      examples_[step - first_] = rows;
      return;
    }
    Saved saved{input, target, {}, {}};
    if (o_.stash()) saved.weights = snapshot();
    // The recomputation in backward() must draw what this forward draws (dropout), as
    // torch.utils.checkpoint's preserve_rng_state does.
    saved.rng = cpu_generator().get_state();
    at::Tensor out;
    {
      torch::NoGradGuard no_grad;
      out = run_stage(input, step);
    }
    if (step == o_.testing().inject_bad_shape() && stage_ == 0 && out.dim() == 2 && out.size(1) > 1) {
      spdlog::warn("inject_bad_shape: sending micro-batch {}'s activations one column short", step);
      out = out.narrow(1, 0, out.size(1) - 1);
    }
    send(kAct, step, out.contiguous(), target);
    saved_.emplace(step, std::move(saved));
  }

  void backward(int64_t step) {
    Message m = await(kGrad, step);
    const at::Tensor grad = StageTensor::decode(m, kGrad).t;
    check_received(m, grad, "gradient", step);
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
    // The recomputed forward replays the first one: the same random draws, and batch norm's
    // running statistics must not count the micro-batch twice.
    std::vector<at::Tensor> statistics;
    for (const auto& b : stage()->buffers()) statistics.push_back(b.clone());
    at::Generator gen = cpu_generator();
    const at::Tensor rng_now = gen.get_state();
    gen.set_state(saved.rng);
    at::Tensor out = run_stage(in, step);
    gen.set_state(rng_now);
    FEDRA_REQUIRE(grad.sizes() == out.sizes(), "pipeline stage {}: the gradient of micro-batch {} is {}, its output {}",
                  stage_, step, describe_tensor(grad), describe_tensor(out));
    out.backward(grad);
    {  // after backward: batch norm's backward reads the buffers the recomputation saw
      torch::NoGradGuard no_grad;
      const auto buffers = stage()->buffers();
      for (size_t i = 0; i < buffers.size(); ++i) buffers[i].copy_(statistics[i]);
    }
    if (o_.stash()) restore(live);
    if (stage_ > 0) send(kGrad, step, in.grad());
    apply_gradients();
  }

  struct Saved {
    at::Tensor input, target;
    std::vector<at::Tensor> weights;  // with stash: the weights of this micro-batch's forward
    at::Tensor rng;                   // torch's CPU generator before this micro-batch's forward
  };

  static at::Generator cpu_generator() { return at::globalContext().defaultGenerator(c10::DeviceType::CPU); }

  PipelineOptions o_;
  torch::nn::Sequential stage_model_{nullptr};  // this worker's stage (its weights come with each run)
  int64_t built_stage_ = -1;
  int64_t stage_ = 0;
  bool last_ = false;
  const Dataset* data_ = nullptr;
  Inbox inbox_;
  std::map<int64_t, Saved> saved_;
  std::vector<int64_t> cut_shape_;  // what the cut below this stage carries past the batch
  at::Tensor losses_, examples_;
  int64_t first_ = 0;
};

}  // namespace

std::unique_ptr<WorkerStrategy> new_worker(const Job& job, const PipelineOptions& options) {
  return std::make_unique<PipelineWorker>(job, options);
}

}  // namespace fedra::pipeline
