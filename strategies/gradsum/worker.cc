// gradsum's worker half: a replica that streams its gradient bucket by bucket from backward.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <optional>

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "core/data/batching.h"
#include "core/data/tensor_checks.h"
#include "core/model/model.h"
#include "core/net/peer.h"
#include "core/training/optimizer.h"
#include "core/training/training.h"
#include "strategies/gradsum/internal.h"
#include "strategies/gradsum/messages.h"
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
      int64_t numel = 0;
      for (const Piece& p : bucket) {
        names.push_back(layout_.piece_name(p));
        numel += p.count;
      }
      piece_names_.push_back(std::move(names));
      flat_numel_.push_back(numel);
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
    name_ = ctx.name;
    rank_ = run.rank;
    world_ = run.world;
    if (!batches_) batches_.emplace(enum_name(o_.schedule().batches()), o_.schedule().batch_size(), job_.seed, ctx.name, rank_);
    const int64_t first = run.first;
    const int64_t count = run.steps;
    const auto timeout = o_.schedule().step_timeout_ms();
    load_model_state(*model_, run.params);
    // The coordinator chose the ring (topology=ring, or auto with every worker on a peer port).
    if (request.options.count("peers") != 0) return handle_ring(run, request, ctx, link);
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
      end_step(s, *link_);
    }
    RoundDone done;
    done.round = request.round;
    for (const auto& b : model_->named_buffers()) done.buffers.emplace_back(b.key(), b.value());  // averaged upstream
    done.compute_ms = count > 0 ? 1000 * compute_s / static_cast<double>(count) : 0;
    done.wait_ms = count > 0 ? 1000 * wait_s / static_cast<double>(count) : 0;
    done.steps = static_cast<double>(count);
    return done.encode();
  }

 private:
  // topology=ring: the replicas all-reduce among themselves (core/net/peer.h) and each steps its own
  // optimiser; the coordinator hears only heartbeats, checksums and the final reply.
  Message handle_ring(const RunIns& run, const Message& request, WorkerContext& ctx, WorkerLink& link) {
    const auto timeout = o_.schedule().step_timeout_ms();
    if (flat_.empty()) {
      for (size_t b = 0; b < layout_.buckets.size(); ++b) {
        flat_.push_back(at::zeros({flat_numel_[b]}, layout_.params[layout_.buckets[b][0].param].options()));
      }
    }
    optimizer_.emplace(OptimizerConfig::from(o_.optim()), layout_.names, layout_.params);
    optimizer_->load_state(run.opt_state);
    ring_ = join_links(request, ctx.peers, ctx.name, static_cast<size_t>(rank_), static_cast<size_t>(world_), timeout);
    RingAllReduce allreduce(*ring_, layout_.buckets.size());
    allreduce_ = &allreduce;
    double compute_s = 0, wait_s = 0, exchange_s = 0, loss_sum = 0, first_loss = std::nan("");
    int64_t examples = 0;
    Heartbeat beat(kProgress);
    beat.start(timeout);
    try {
      for (int64_t s = run.first; s < run.first + run.steps; ++s) {
        const auto t0 = Clock::now();
        allreduce.begin_step(static_cast<uint64_t>(s));
        compute_and_send(s, *ctx.data);
        const auto t1 = Clock::now();
        allreduce.finish(timeout);
        const auto t2 = Clock::now();
        compute_s += Seconds(t1 - t0).count();
        wait_s += Seconds(t2 - t1).count();
        exchange_s += Seconds(t2 - first_start_).count();
        if (examples_ > 0) {
          if (std::isnan(first_loss)) first_loss = loss_;
          loss_sum += loss_ * static_cast<double>(examples_);
          examples += examples_;
        }
        apply_reduced(allreduce);
        beat.after_step(link, s, /*sent_other=*/end_step(s, link));  // a checksum counts as a heartbeat
      }
    } catch (const std::exception& e) {
      ring_->abort(e.what());  // the neighbours learn at once, not at their timeout
      allreduce_ = nullptr;
      ring_.reset();
      throw;
    }
    allreduce_ = nullptr;
    RoundDone done;
    done.round = request.round;
    for (const auto& b : model_->named_buffers()) done.buffers.emplace_back(b.key(), b.value());
    if (rank_ == 0) {  // the replicas are identical: one brings the model and optimiser home
      for (size_t i = 0; i < layout_.params.size(); ++i) done.params.emplace_back(layout_.names[i], layout_.params[i]);
      done.opt_state = optimizer_->state();
    }
    const double n = static_cast<double>(run.steps);
    done.checksum = std::to_string(checksum(layout_.params));
    done.compute_ms = run.steps > 0 ? 1000 * compute_s / n : 0;
    done.wait_ms = run.steps > 0 ? 1000 * wait_s / n : 0;
    done.exchange_ms = run.steps > 0 ? 1000 * exchange_s / n : 0;
    done.steps = n;
    done.loss_sum = loss_sum;
    done.loss_examples = static_cast<double>(examples);
    done.first_loss = first_loss;
    done.ring_bytes_sent = static_cast<double>(ring_->bytes_sent());
    done.ring_bytes_received = static_cast<double>(ring_->bytes_received());
    ring_.reset();  // its links close when the next ring forms
    return done.encode();
  }

  // The reduced gradient, bucket by bucket, into every replica's identical optimiser.
  void apply_reduced(const RingAllReduce& allreduce) {
    torch::NoGradGuard no_grad;
    optimizer_->begin_step();
    for (size_t b = 0; b < layout_.buckets.size(); ++b) {
      // The sum arrives as chunks of the bucket; a piece may span several.
      for (const auto& chunk : allreduce.result(b)) {
        if (o_.reduce() == Reduce::kMean && world_ > 1) chunk.values.div_(static_cast<double>(world_));
        const int64_t lo = chunk.offset, hi = chunk.offset + chunk.values.numel();
        int64_t at = 0;
        for (const Piece& p : layout_.buckets[b]) {
          const int64_t from = std::max(lo, at), to = std::min(hi, at + p.count);
          if (from < to) optimizer_->update(p.param, p.offset + (from - at), chunk.values.narrow(0, from - lo, to - from));
          at += p.count;
        }
      }
    }
  }

  void compute_and_send(int64_t step, const Dataset& data) {
    if (o_.exchange_only()) {
      step_ = step;
      examples_ = 0;
      first_sent_ = false;
      if (constant_.empty()) {
        for (const auto& p : layout_.params) constant_.push_back(at::full_like(p, 1e-6));
      }
      pending_ = constant_;
      if (allreduce_ != nullptr) {
        // Like gloo's all_reduce of a tensor that is already there: the buckets are filled first,
        // then reduced, so exchange_ms measures the all-reduce alone.
        for (auto& f : flat_) f.fill_(1e-6);
        first_start_ = Clock::now();
        first_sent_ = true;
        for (size_t b = 0; b < layout_.buckets.size(); ++b) allreduce_->start(b, flat_[b]);
        return;
      }
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
    if (allreduce_ != nullptr) return start_ring_bucket(b);
    Bucket grad;
    grad.step = static_cast<uint64_t>(step_);
    grad.bucket = b;
    if (!first_sent_) grad.loss = std::make_pair(examples_ > 0 ? loss_ : 0.0, static_cast<double>(examples_));
    const auto& bucket = layout_.buckets[b];
    for (size_t j = 0; j < bucket.size(); ++j) {
      grad.pieces.emplace_back(piece_names_[b][j],
                               pending_[bucket[j].param].view({-1}).narrow(0, bucket[j].offset, bucket[j].count));
    }
    link_->send(grad.encode(kGrad));
    if (!first_sent_ && inject_.what == "exit" && inject_.step == step_ && injected()) {
      spdlog::warn("inject exit:{}: this worker dies mid-step", step_);
      std::_Exit(3);
    }
    first_sent_ = true;
  }

  // After step s, both topologies: the test's desync, then every check_every steps the
  // parameters' checksum to the coordinator. Returns whether a checksum went.
  bool end_step(int64_t s, WorkerLink& link) {
    if (inject_.what == "desync" && inject_.step == s && injected()) {
      spdlog::warn("inject desync:{}: perturbing this replica's weights", s);
      torch::NoGradGuard no_grad;
      layout_.params[0].add_(1e-3);
    }
    if (o_.check_every() <= 0 || (s + 1) % o_.check_every() != 0) return false;
    link.send(StepCheck{static_cast<uint64_t>(s), std::to_string(checksum(layout_.params))}.encode());
    return true;
  }

  bool injected() const { return inject_.worker.empty() ? rank_ == world_ - 1 : inject_.worker == name_; }

  // The bucket's pieces, copied into its flat buffer, start around the ring; the hooks of the
  // layers below keep backward going while the kernel moves the bytes.
  void start_ring_bucket(size_t b) {
    if (!first_sent_) {
      first_start_ = Clock::now();
      if (inject_.what == "exit" && inject_.step == step_ && injected()) {
        spdlog::warn("inject exit:{}: this worker dies mid-step", step_);
        std::_Exit(3);
      }
      first_sent_ = true;
    }
    int64_t at = 0;
    for (const Piece& p : layout_.buckets[b]) {
      flat_[b].narrow(0, at, p.count).copy_(pending_[p.param].view({-1}).narrow(0, p.offset, p.count));
      at += p.count;
    }
    allreduce_->start(b, flat_[b]);
    allreduce_->progress();
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
      const Bucket up = Bucket::decode(std::move(m), kUpdate, layout_.buckets.size(), "the coordinator");
      const size_t b = up.bucket;
      FEDRA_REQUIRE(!seen[b], "bad bucket {} in an update: it came twice", b);
      seen[b] = 1;
      const auto& bucket = layout_.buckets[b];
      FEDRA_REQUIRE(up.pieces.size() == bucket.size(), "update bucket {} has {} tensors, expected {}", b,
                    up.pieces.size(), bucket.size());
      for (size_t j = 0; j < bucket.size(); ++j) {
        const Piece& p = bucket[j];
        const at::Tensor& t = up.pieces[j].second;
        FEDRA_REQUIRE(up.pieces[j].first == piece_names_[b][j] && t.dim() == 1 && t.numel() == p.count &&
                          t.scalar_type() == layout_.params[p.param].scalar_type(),
                      "update tensor '{}' {} does not match '{}' {}", up.pieces[j].first,
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
  std::string name_;
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
  // topology=ring
  std::vector<at::Tensor> flat_;  // per bucket: its pieces, contiguous, reduced in place
  std::vector<int64_t> flat_numel_;
  std::unique_ptr<PeerRing> ring_;
  RingAllReduce* allreduce_ = nullptr;  // during a ring round, for the backward hooks
  Clock::time_point first_start_;
};

}  // namespace

std::unique_ptr<WorkerStrategy> new_worker(const Job& job, const GradSumOptions& options) {
  return std::make_unique<GradSumWorker>(job, options);
}

}  // namespace fedra::gradsum
