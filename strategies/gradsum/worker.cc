// gradsum's worker half: a replica that streams its gradient bucket by bucket from backward.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <optional>

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "core/batching.h"
#include "core/model.h"
#include "core/optimizer.h"
#include "core/tensor_checks.h"
#include "core/training.h"
#include "strategies/gradsum/internal.h"
#include "strategies/run_message.h"

namespace fedra::gradsum {

namespace {

using Clock = std::chrono::steady_clock;
using Seconds = std::chrono::duration<double>;

class GradSumWorker : public WorkerStrategy {
 public:
  GradSumWorker(const Job& job, GradSumOptions options)
      : job_(job), o_(std::move(options)), inject_(parse_injection(o_.testing().inject())) {
    check_loss_name(job.loss);
    model_ = build_model(job.model, job.seed);
    layout_ = layout_of(*model_, static_cast<uint64_t>(o_.bucket_kb()) << 10);
    pending_.resize(layout_.params.size());
    ready_.assign(layout_.buckets.size(), 0);
    for (const auto& bucket : layout_.buckets) {
      std::vector<std::string> names;
      for (const Piece& p : bucket) names.push_back(layout_.piece_name(p));
      piece_names_.push_back(std::move(names));
    }
    if (o_.overlap()) {
      size_t i = 0;
      for (auto& p : model_->parameters()) {
        p.register_hook([this, i](const at::Tensor& grad) { on_grad(i, grad); });
        ++i;
      }
    }
  }

  Message handle(const Message& request, WorkerContext& ctx, WorkerLink& link) override {
    const RunIns run = RunIns::decode(request, kRun);
    FEDRA_REQUIRE(ctx.data != nullptr && ctx.data->size() > 0, "worker {} has no training data", ctx.name);
    link_ = &link;
    rank_ = run.rank;
    world_ = run.world;
    if (!batches_) batches_.emplace(enum_name(o_.schedule().batches()), o_.schedule().batch_size(), job_.seed, ctx.name, rank_);
    const int64_t first = run.first;
    const int64_t count = run.steps;
    const auto timeout = o_.schedule().step_timeout_ms();
    load_model_state(*model_, run.params);
    if (o_.sync() == Sync::kGradient) {
      optimizer_.emplace(OptimizerConfig::from(o_.optim()), layout_.names, layout_.params);
      optimizer_->load_state(run.opt_state);
    }

    double compute_s = 0, wait_s = 0;
    for (int64_t s = first; s < first + count; ++s) {
      const auto t0 = Clock::now();
      compute_and_send(s, *ctx.data);
      const auto t1 = Clock::now();
      receive_update(s, timeout);
      const auto t2 = Clock::now();
      compute_s += Seconds(t1 - t0).count();
      wait_s += Seconds(t2 - t1).count();
      if (inject_.what == "desync" && inject_.step == s && rank_ == world_ - 1) {
        spdlog::warn("inject desync:{}: perturbing this replica's weights", s);
        torch::NoGradGuard no_grad;
        layout_.params[0].add_(1e-3);
      }
      if (o_.check_every() > 0 && (s + 1) % o_.check_every() == 0) {
        Message check(kCheck);
        check.step = static_cast<uint64_t>(s);
        check.options["checksum"] = std::to_string(checksum(layout_.params));
        link_->send(check);
      }
    }
    Message done(kDone, request.round);
    for (const auto& b : model_->named_buffers()) done.tensors.emplace_back(b.key(), b.value());  // averaged upstream
    done.metrics["compute_ms"] = count > 0 ? 1000 * compute_s / static_cast<double>(count) : 0;
    done.metrics["wait_ms"] = count > 0 ? 1000 * wait_s / static_cast<double>(count) : 0;
    done.metrics["steps"] = static_cast<double>(count);
    return done;
  }

 private:
  void compute_and_send(int64_t step, const Dataset& data) {
    if (o_.exchange_only()) {
      step_ = step;
      examples_ = 0;
      first_sent_ = false;
      if (constant_.empty()) {
        for (const auto& p : layout_.params) constant_.push_back(at::full_like(p, 1e-6));
      }
      pending_ = constant_;
      for (size_t b = 0; b < layout_.buckets.size(); ++b) send_bucket(b);
      return;
    }
    auto [x, y] = batches_->batch(data, step);
    step_ = step;
    examples_ = x.size(0);
    std::fill(ready_.begin(), ready_.end(), 0);
    for (auto& g : pending_) g = at::Tensor();
    first_sent_ = false;
    for (auto& p : model_->parameters()) p.mutable_grad() = at::Tensor();
    at::Tensor loss = compute_loss(model_->forward(x), y, job_.loss);
    loss_ = loss.item<double>();
    in_backward_ = true;
    try {
      loss.backward();
    } catch (...) {
      in_backward_ = false;
      throw;
    }
    in_backward_ = false;
    // Without overlap (or for parameters the loss does not reach) send what is left now.
    const auto params = model_->parameters();
    for (size_t b = 0; b < layout_.buckets.size(); ++b) {
      if (ready_[b] == layout_.buckets[b].size()) continue;
      for (const Piece& p : layout_.buckets[b]) {
        if (pending_[p.param].defined()) continue;
        const at::Tensor& g = params[p.param].grad();
        pending_[p.param] = g.defined() ? g.contiguous() : at::zeros_like(layout_.params[p.param]);
      }
      ready_[b] = layout_.buckets[b].size();
      send_bucket(b);
    }
  }

  void on_grad(size_t i, const at::Tensor& grad) {
    if (!in_backward_) return;
    pending_[i] = grad.contiguous();
    for (size_t b : layout_.buckets_of[i]) {
      if (++ready_[b] == layout_.buckets[b].size()) send_bucket(b);
    }
  }

  void send_bucket(size_t b) {
    Message m(kGrad);
    m.step = static_cast<uint64_t>(step_);
    m.metrics["bucket"] = static_cast<double>(b);
    if (!first_sent_) {
      m.metrics["loss"] = examples_ > 0 ? loss_ : 0.0;
      m.metrics["examples"] = static_cast<double>(examples_);
    }
    const auto& bucket = layout_.buckets[b];
    for (size_t j = 0; j < bucket.size(); ++j) {
      m.tensors.emplace_back(piece_names_[b][j],
                             pending_[bucket[j].param].view({-1}).narrow(0, bucket[j].offset, bucket[j].count));
    }
    link_->send(m);
    if (!first_sent_ && inject_.what == "exit" && inject_.step == step_ && rank_ == world_ - 1) {
      spdlog::warn("inject exit:{}: this worker dies mid-step", step_);
      std::_Exit(3);
    }
    first_sent_ = true;
  }

  void receive_update(int64_t step, std::chrono::milliseconds timeout) {
    torch::NoGradGuard no_grad;
    if (optimizer_) optimizer_->begin_step();
    size_t applied = 0;
    std::vector<char> seen(layout_.buckets.size(), 0);
    while (applied < layout_.buckets.size()) {
      Message m = link_->receive(timeout);
      FEDRA_REQUIRE(m.kind == kUpdate && static_cast<int64_t>(m.step) == step,
                    "expected '{}' for step {}, got '{}' for step {}", kUpdate, step, m.kind, m.step);
      const double bv = m.metric("bucket");
      FEDRA_REQUIRE(bv >= 0 && bv < static_cast<double>(layout_.buckets.size()) && !seen[static_cast<size_t>(bv)],
                    "bad bucket {} in an update", bv);
      const auto b = static_cast<size_t>(bv);
      seen[b] = 1;
      const auto& bucket = layout_.buckets[b];
      FEDRA_REQUIRE(m.tensors.size() == bucket.size(), "update bucket {} has {} tensors, expected {}", b,
                    m.tensors.size(), bucket.size());
      for (size_t j = 0; j < bucket.size(); ++j) {
        const Piece& p = bucket[j];
        const at::Tensor& t = m.tensors[j].second;
        FEDRA_REQUIRE(m.tensors[j].first == piece_names_[b][j] && t.dim() == 1 && t.numel() == p.count &&
                          t.scalar_type() == layout_.params[p.param].scalar_type(),
                      "update tensor '{}' {} does not match '{}' {}", m.tensors[j].first,
                      describe_tensor(t), piece_names_[b][j], describe_tensor(layout_.slice(p)));
        if (optimizer_) optimizer_->update(p.param, p.offset, t);
        else layout_.slice(p).copy_(t);
      }
      ++applied;
    }
  }

  Job job_;
  GradSumOptions o_;
  Injection inject_;
  torch::nn::Sequential model_{nullptr};
  Layout layout_;
  std::optional<ParamOptimizer> optimizer_;
  WorkerLink* link_ = nullptr;  // the link of the request being handled, for the backward hooks
  int64_t rank_ = 0, world_ = 1;
  std::optional<BatchOrder> batches_;
  // The step in progress, for the backward hooks.
  int64_t step_ = 0;
  int64_t examples_ = 0;
  double loss_ = 0;
  bool in_backward_ = false;
  bool first_sent_ = false;
  std::vector<at::Tensor> pending_;
  std::vector<size_t> ready_;
  std::vector<std::vector<std::string>> piece_names_;
  std::vector<at::Tensor> constant_;  // exchange_only's gradient
};

}  // namespace

std::unique_ptr<WorkerStrategy> new_worker(const Job& job, const GradSumOptions& options) {
  return std::make_unique<GradSumWorker>(job, options);
}

}  // namespace fedra::gradsum
