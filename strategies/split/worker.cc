// Split learning's worker half: the bottom (and head) of the network and the raw data.
#include "strategies/split/internal.h"

#include <algorithm>
#include <cstdlib>
#include <chrono>
#include <cmath>
#include <deque>
#include <map>
#include <optional>
#include <set>

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "core/data/batching.h"
#include "core/data/tensor_checks.h"
#include "core/federated/aggregation.h"
#include "core/loops/cohort.h"
#include "core/model/model.h"
#include "core/training/optimizer.h"
#include "core/training/training.h"
#include "strategies/run_message.h"

namespace fedra::split {

namespace {

class SplitWorker : public WorkerStrategy {
 public:
  SplitWorker(const Job& job, SplitOptions options) : job_(job), o_(std::move(options)) {
    check_loss_name(job.loss);
    ushaped_ = o_.labels() == Labels::kWorker;
    SplitModel m = split_model(job.model, job.seed, ushaped_);
    bottom_.init(m.bottom, OptimizerConfig::from(o_.optim()));
    if (ushaped_) head_.init(m.head, OptimizerConfig::from(o_.optim()));
  }

  Message handle(const Message& request, WorkerContext& ctx, WorkerLink& link) override {
    const TurnIns turn = TurnIns::decode(request);
    FEDRA_REQUIRE(ctx.data != nullptr && ctx.data->size() > 0, "worker {} has no training data", ctx.name);
    link_ = &link;
    if (!batches_) batches_.emplace(enum_name(o_.batches()), o_.batch_size(), job_.seed, ctx.name);
    load_model_state(*bottom_.net, state_for(turn.weights, *bottom_.net));
    if (ushaped_) load_model_state(*head_.net, state_for(turn.weights, *head_.net));
    if (turn.set_opt_state) {  // the coordinator's record of this worker's optimisers
      NamedTensors opt = turn.opt_state;
      bottom_.opt->load_state(take_prefixed(opt, "bottom/"));
      if (ushaped_) head_.opt->load_state(take_prefixed(opt, "head/"));
      FEDRA_REQUIRE(opt.empty(), "'{}' carries optimiser state '{}' for no part of this worker", kRun, opt.front().first);
    }
    const int64_t first = turn.first;
    const int64_t count = turn.steps;
    const bool last = turn.last;
    timeout_ = o_.step_timeout_ms();
    compute_s_ = wait_s_ = rtt_s_ = 0;
    examples_ = recomputes_ = 0;
    inflight_.clear();

    for (int64_t s = first; s < first + count; ++s) {
      const auto t0 = Clock::now();
      InFlight f;
      f.step = s;
      if (o_.exchange_only()) {
        if (!fixed_act_.defined()) {
          torch::NoGradGuard no_grad;
          std::tie(f.x, f.y) = batches_->batch(*ctx.data, s);
          fixed_act_ = bottom_.net->forward(f.x).contiguous();
          fixed_y_ = f.y;
        }
        // The step's real batch size (the last batch of an epoch is short), so the bytes on the
        // wire are those of a training run.
        const int64_t n = ctx.data->size();
        const int64_t b = o_.batch_size();
        const int64_t rows = std::min({fixed_act_.size(0), b, n - (s % steps_per_epoch(n, b)) * b});
        f.x = fixed_act_.slice(0, 0, rows);
        f.y = fixed_y_.slice(0, 0, rows);
        f.act = f.x;
      } else {
        std::tie(f.x, f.y) = batches_->batch(*ctx.data, s);
        f.act = bottom_.net->forward(f.x);
      }
      f.version = bottom_.updates();
      CutMessage act;
      act.step = static_cast<uint64_t>(s);
      if (last && s == o_.testing().inject_bad_shape()) {
        spdlog::warn("inject_bad_shape={}: sending activations one feature short", s);
        act.tensor = f.act.detach().narrow(1, 0, f.act.size(1) - 1);
      } else {
        act.tensor = f.act.detach();
      }
      if (!ushaped_) act.labels = f.y;
      examples_ += f.x.size(0);
      compute_s_ += Seconds(Clock::now() - t0).count();
      f.sent = Clock::now();
      link_->send(act.encode(kAct));
      if (last && s == o_.testing().inject_exit()) {
        spdlog::warn("inject_exit={}: this worker dies mid-turn", s);
        std::_Exit(3);
      }
      inflight_.push_back(std::move(f));
      while (static_cast<int64_t>(inflight_.size()) >= o_.pipeline()) complete_one();
    }
    while (!inflight_.empty()) complete_one();

    TurnDone done;
    done.weights = model_state(*bottom_.net);
    if (ushaped_) {
      for (auto& nt : model_state(*head_.net)) done.weights.push_back(std::move(nt));
    }
    if (turn.want_state) {
      append_prefixed(done.opt_state, "bottom/", bottom_.opt->state());
      if (ushaped_) append_prefixed(done.opt_state, "head/", head_.opt->state());
    }
    const double n = static_cast<double>(std::max<int64_t>(1, count));
    done.examples = examples_;
    done.steps = count;
    done.compute_ms = 1000 * compute_s_ / n;
    done.wait_ms = 1000 * wait_s_ / n;
    done.rtt_ms = 1000 * rtt_s_ / n;
    done.recomputes = recomputes_;
    return done.encode(request.round);
  }

 private:
  struct InFlight {
    int64_t step = 0;
    at::Tensor x, y, act;
    uint64_t version = 0;
    Clock::time_point sent;
    bool head_done = false;
  };

  // Receives messages until the oldest micro-batch in flight has its cut gradient, and applies it.
  void complete_one() {
    for (;;) {
      const auto w0 = Clock::now();
      Message m = link_->receive(timeout_);
      const auto w1 = Clock::now();
      wait_s_ += Seconds(w1 - w0).count();
      if (m.kind == kOut && ushaped_) {
        run_head(CutMessage::decode(std::move(m), kOut, "the coordinator"));
        compute_s_ += Seconds(Clock::now() - w1).count();
        continue;
      }
      FEDRA_REQUIRE(m.kind == kGrad, "expected '{}' during a split turn, got '{}'", kGrad, m.kind);
      FEDRA_REQUIRE(!inflight_.empty() && static_cast<int64_t>(m.step) == inflight_.front().step,
                    "cut gradient for step {} arrived, expected step {}", m.step,
                    inflight_.empty() ? -1 : inflight_.front().step);
      InFlight f = std::move(inflight_.front());
      inflight_.pop_front();
      rtt_s_ += Seconds(w1 - f.sent).count();
      const at::Tensor g = CutMessage::decode(std::move(m), kGrad, "the coordinator").tensor;
      FEDRA_REQUIRE(g.sizes() == f.act.sizes() && g.scalar_type() == f.act.scalar_type(),
                    "cut gradient for step {} is {}, the activations were {}", f.step, describe_tensor(g),
                    describe_tensor(f.act));
      if (o_.exchange_only()) return;
      if (backward_through(bottom_, f.act, f.version, g, graphs_break_, [&] { return bottom_.net->forward(f.x); })) {
        ++recomputes_;
      }
      bottom_.step();
      compute_s_ += Seconds(Clock::now() - w1).count();
      return;
    }
  }

  // U-shaped: the head's forward and backward on the middle's output, with the private labels.
  void run_head(const CutMessage& m) {
    auto it = std::find_if(inflight_.begin(), inflight_.end(),
                           [&](const InFlight& f) { return f.step == static_cast<int64_t>(m.step); });
    FEDRA_REQUIRE(it != inflight_.end() && !it->head_done, "middle output for step {} was not expected", m.step);
    it->head_done = true;
    at::Tensor o = m.tensor.detach().requires_grad_(true);
    at::Tensor logits = guarded(fmt::format("the middle's output {} does not fit the head of '{}'",
                                            describe_tensor(o), job_.model),
                                [&] { return head_.net->forward(o); });
    at::Tensor loss = compute_loss(logits, it->y, job_.loss);
    head_.zero_grad();
    loss.backward();
    head_.step();
    CutMessage up;
    up.step = m.step;
    up.tensor = o.grad();
    up.loss = loss.item<double>();
    up.examples = static_cast<double>(it->y.size(0));
    if (job_.loss == "ce") up.correct = logits.argmax(1).eq(it->y).sum().item<double>();
    link_->send(up.encode(kOutGrad));
  }

  Job job_;
  SplitOptions o_;
  bool ushaped_ = false;
  Part bottom_, head_;
  std::optional<BatchOrder> batches_;
  WorkerLink* link_ = nullptr;  // the link of the request being handled
  std::chrono::milliseconds timeout_{60000};
  std::deque<InFlight> inflight_;
  double compute_s_ = 0, wait_s_ = 0, rtt_s_ = 0;
  int64_t examples_ = 0, recomputes_ = 0;
  bool graphs_break_ = false;
  at::Tensor fixed_act_, fixed_y_;  // exchange_only
};

}  // namespace

std::unique_ptr<WorkerStrategy> new_worker(const Job& job, const SplitOptions& options) {
  return std::make_unique<SplitWorker>(job, options);
}

}  // namespace fedra::split
