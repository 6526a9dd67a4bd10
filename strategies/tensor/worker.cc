// tensor's worker half.
#include "strategies/tensor/internal.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <deque>
#include <map>
#include <optional>

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

namespace fedra::tensor {

namespace {

class TensorWorker : public ModelParallelWorker {
 public:
  TensorWorker(const Job& job, const TensorOptions& options)
      : ModelParallelWorker(job, options.schedule(), options.optim(), "tensor", /*closed=*/true),
        plan_(plan_shards(build_model(job.model, job.seed), options.workers())) {}

  Message run_part(const Message& request, WorkerContext& ctx, WorkerLink& link) override {
    const RunIns run = begin(request, ctx, link, kRun);
    rank_ = run.rank;
    FEDRA_REQUIRE(run.world == plan_.world, "tensor: rank {} of {} does not fit tensor.workers = {}", rank_, run.world,
                  plan_.world);
    if (rank_ == 0) draw_batches(ctx, "rank 0");
    load(run);
    const int64_t first = run.first;
    const int64_t count = run.steps;
    first_ = first;
    end_ = first + count;
    stash_.clear();

    at::Tensor losses = at::zeros({count}, at::kDouble);
    at::Tensor examples = at::zeros({count}, at::kLong);
    for (int64_t i = 0; i < count; ++i) {
      try {
        const auto [loss, n] = step(first + i, ctx);
        losses[i] = loss;
        examples[i] = n;
        heartbeat(first + i);
      } catch (const c10::Error& e) {
        FEDRA_FAIL("tensor rank {}, step {}: {}", rank_, first + i, e.what_without_backtrace());
      }
    }
    Message reply = done(kDone, request.round, rank_ == 0 ? NamedTensors{{"loss", losses}, {"examples", examples}} : NamedTensors{});
    reply.metrics["compute_ms"] = count > 0 ? 1000 * compute_s_ / static_cast<double>(count) : 0;
    reply.metrics["wait_ms"] = count > 0 ? 1000 * wait_s_ / static_cast<double>(count) : 0;
    return reply;
  }

 private:
  void load(const RunIns& run) {
    check_layout(shard_layout(plan_, rank_), run.params);
    std::vector<std::string> names;
    std::vector<at::Tensor> params;
    weight_.assign(plan_.layers.size(), at::Tensor());
    bias_.assign(plan_.layers.size(), at::Tensor());
    for (const auto& [name, t] : run.params) {
      names.push_back(name);
      params.push_back(t.clone().requires_grad_());
      const auto dot = name.rfind('.');
      const auto it = std::find(plan_.layers.begin(), plan_.layers.end(), name.substr(0, dot));
      const auto l = static_cast<size_t>(it - plan_.layers.begin());
      (name.substr(dot + 1) == "weight" ? weight_ : bias_)[l] = params.back();
    }
    set_params(std::move(names), std::move(params), run.opt_state);
  }

  // The coordinator's next message of `kind` for (step, op); others that arrive first wait.
  Message await(const char* kind, int64_t step, int64_t op) {
    return stash_.await(
        *link_, timeout_,
        [&](const Message& m) {
          return m.kind == kind && static_cast<int64_t>(m.step) == step &&
                 (op < 0 || static_cast<int64_t>(m.metric_or("op", -1)) == op);
        },
        [&](const Message& m) {
          FEDRA_REQUIRE((m.kind == kBatch || m.kind == kResult) && stash_.size() < 16,
                        "tensor worker: expected '{}' for step {}, got '{}' for step {}", kind, step, m.kind, m.step);
        },
        wait_s_);
  }

  // A message from a neighbour during a step: a batch or a part; anything else, or too many
  // waiting, is refused.
  void keep_peer(const Message& m, const std::string& waiting_for) const {
    FEDRA_REQUIRE((m.kind == kBatch || m.kind == kReduce || m.kind == kGather) &&
                      static_cast<int64_t>(m.step) >= first_ && static_cast<int64_t>(m.step) < end_,
                  "tensor rank {}: waiting for {}, {} sent '{}' for step {} (this round: steps {}..{})", rank_,
                  waiting_for, m.sender, m.kind, m.step, first_, end_ - 1);
    FEDRA_REQUIRE(peer_waiting() <= static_cast<size_t>(4 * plan_.world + 8),
                  "tensor rank {}: waiting for {}, {} messages from the other ranks are waiting already", rank_,
                  waiting_for, peer_waiting());
  }

  // Over direct links: every rank's part in rank order. Up to 3 ranks, a rank's neighbours are all
  // the others: its part goes to each directly (one hop). With more, it goes to the next rank and
  // each part received is passed on until it has been round the ring (n - 1 hops). Each part is
  // checked as it arrives.
  bool to_all_directly() const { return plan_.world <= 3; }
  void send_to_others(Message m) {
    if (plan_.world == 3) send_prev(m);
    send_next(std::move(m));
  }

  std::vector<at::Tensor> ring_parts(const char* kind, int64_t step, const at::Tensor& part) {
    const int64_t world = plan_.world;
    std::vector<at::Tensor> parts(static_cast<size_t>(world));
    parts[static_cast<size_t>(rank_)] = part;
    send_to_others(CollectivePart{static_cast<uint64_t>(step), op_, rank_, part}.encode(kind));
    const bool reduce = kind == std::string(kReduce);
    for (int64_t k = 1; k < world; ++k) {
      const int64_t origin = (rank_ - k + world) % world;
      const std::string what = fmt::format("step {} op {}: the part of rank {}", step, op_, origin);
      Message got = await_peer(
          [&](const Message& x) {
            return x.kind == kind && static_cast<int64_t>(x.step) == step &&
                   static_cast<int64_t>(x.metric_or("op", -1)) == op_ &&
                   static_cast<int64_t>(x.metric_or("origin", -1)) == origin;
          },
          [&](const Message& x) { keep_peer(x, what); }, what);
      const at::Tensor p = CollectivePart::decode(got).t;
      const bool fits = p.dim() == 2 && p.scalar_type() == at::kFloat &&
                        (reduce ? p.sizes() == part.sizes() : p.size(0) == part.size(0));
      FEDRA_REQUIRE(fits, "{} (rank {}) sent {} for step {} op {}, which does not fit {} of {} (rank {})", got.sender,
                    origin, describe_tensor(p), step, op_, describe_tensor(part), name_, rank_);
      try {
        check_finite(got.tensors);
      } catch (const Error& e) {
        FEDRA_FAIL("{} (rank {}) sent step {} op {}: {}", got.sender, origin, step, op_, e.what());
      }
      if (!to_all_directly() && (rank_ + 1) % world != origin) send_next(got);  // on round the ring
      parts[static_cast<size_t>(origin)] = p;
    }
    return parts;
  }

  at::Tensor collective(const char* kind, int64_t step, const at::Tensor& t) {
    at::Tensor out;
    if (linked()) {
      const auto parts = ring_parts(kind, step, t.detach().contiguous());
      if (kind == std::string(kReduce)) {  // in rank order, as the star's coordinator: every rank gets the same bits
        out = parts[0].clone();
        for (size_t k = 1; k < parts.size(); ++k) out.add_(parts[k]);
      } else {
        out = at::cat(parts, 1);
      }
      ++op_;
    } else {
      link_->send(CollectivePart{static_cast<uint64_t>(step), op_, -1, t.detach().contiguous()}.encode(kind));
      out = CollectivePart::decode(await(kResult, step, op_++)).t;
    }
    // A sum has the part's shape; a gather the whole last layer's width.
    const int64_t width = kind == std::string(kGather) ? plan_.out.back() : t.size(1);
    FEDRA_REQUIRE(out.dim() == 2 && out.size(0) == t.size(0) && out.size(1) == width &&
                      out.scalar_type() == at::kFloat,
                  "tensor worker: the result of step {} is {}; the part sent was {}, the result should have {} "
                  "columns", step, describe_tensor(out), describe_tensor(t), width);
    return out;
  }

  std::pair<double, int64_t> step(int64_t s, const WorkerContext& ctx) {
    const auto t0 = Clock::now();
    const double wait_before = wait_s_;
    at::Tensor x, y;
    if (rank_ == 0) {
      auto [bx, by] = batches_->batch(*ctx.data, s);
      x = bx.contiguous();
      y = by.contiguous();
      if (plan_.world > 1) {
        Message m = TensorBatch{static_cast<uint64_t>(s), x, y}.encode();
        if (linked()) {
          send_to_others(std::move(m));
        } else {
          link_->send(m);
        }
      }
    } else if (linked()) {  // rank 0's batch, directly or round the ring
      const std::string what = fmt::format("step {}: the batch", s);
      Message m = await_peer([&](const Message& b) { return b.kind == kBatch && static_cast<int64_t>(b.step) == s; },
                             [&](const Message& b) { keep_peer(b, what); }, what);
      const TensorBatch b = TensorBatch::decode(m, m.sender);
      x = b.x;
      y = b.y;
      check_finite(m.tensors);
      if (!to_all_directly() && rank_ + 1 < plan_.world) send_next(m);
    } else {
      const TensorBatch b = TensorBatch::decode(await(kBatch, s, -1), "the coordinator");
      x = b.x;
      y = b.y;
    }
    x = x.flatten(1);
    FEDRA_REQUIRE(x.size(1) == plan_.in[0] && x.scalar_type() == at::kFloat,
                  "tensor: the batch is {}, the model's first layer takes {} features", describe_tensor(x), plan_.in[0]);
    for (auto& p : params_) p.mutable_grad() = at::Tensor();
    op_ = 0;

    struct Segment {
      at::Tensor input, output;
      bool gather = false;
    };
    std::vector<Segment> segments;
    const size_t layers = plan_.layers.size();
    at::Tensor a = x, logits;
    for (size_t l = 0; l < layers; l += 2) {
      Segment seg;
      at::Tensor h = a;
      if (l > 0) {
        seg.input = a.detach().requires_grad_();
        h = at::relu(seg.input);
      }
      const at::Tensor z = at::linear(h, weight_[l], bias_[l]);
      if (l + 1 == layers) {
        seg.output = z;
        seg.gather = true;
        logits = collective(kGather, s, z);
      } else {
        seg.output = at::linear(at::relu(z), weight_[l + 1], bias_[l + 1]);
        const at::Tensor sum = collective(kReduce, s, seg.output);
        (l + 2 == layers ? logits : a) = sum;
      }
      segments.push_back(seg);
    }
    at::Tensor out = logits.detach().requires_grad_();
    at::Tensor loss = compute_loss(out, y, job_.loss);
    loss.backward();
    at::Tensor g = out.grad();
    for (size_t k = segments.size(); k-- > 0;) {
      const Segment& seg = segments[k];
      at::Tensor go = g;
      if (seg.gather) {
        const auto [b, e] = plan_.ranges[layers - 1][static_cast<size_t>(rank_)];
        go = g.narrow(1, b, e - b);
      }
      torch::autograd::backward({seg.output}, {go});
      if (k > 0) g = collective(kReduce, s, seg.input.grad());
    }
    apply_gradients();
    compute_s_ += Seconds(Clock::now() - t0).count() - (wait_s_ - wait_before);
    const int64_t n = x.size(0);
    return {n > 0 ? loss.item<double>() : 0.0, n};
  }

  ShardPlan plan_;
  int64_t rank_ = 0;
  std::vector<at::Tensor> weight_, bias_;  // per layer (bias undefined where this rank has none); params_ hold them
  Inbox stash_;
  int64_t op_ = 0;
  int64_t first_ = 0, end_ = 0;  // this round's steps
};

}  // namespace

std::unique_ptr<WorkerStrategy> new_worker(const Job& job, const TensorOptions& options) {
  return std::make_unique<TensorWorker>(job, options);
}

}  // namespace fedra::tensor
