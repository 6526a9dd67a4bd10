// Split learning's coordinator half: the top of the network (the middle, U-shaped), serving
// every worker's activations, relaying the client-side weights.
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
#include "core/loops/stepped_strategy.h"
#include "core/model/model.h"
#include "core/training/optimizer.h"
#include "core/training/training.h"
#include "strategies/run_message.h"

namespace fedra::split {

namespace {

class SplitCoordinator : public SteppedStrategy {
 public:
  SplitCoordinator(const Job& job, SplitOptions options)
      : SteppedStrategy(job, "split", options.eval()), o_(std::move(options)) {
    ushaped_ = o_.labels() == Labels::kWorker;
  }

 protected:

  void prepare(const RunContext&) override {
    model_ = split_model(job().model, job().seed, ushaped_);
    top_.init(model_.top, OptimizerConfig::from(o_.optim()));
    relay_ = clone_state(model_state(*model_.bottom));
    if (ushaped_) {
      for (auto& nt : clone_state(model_state(*model_.head))) relay_.push_back(std::move(nt));
    }
  }
  size_t workers_needed() const override { return static_cast<size_t>(o_.failure().min_workers()); }
  // A round is one epoch: each worker's turn is a pass over its data.
  StepPlan plan_steps(const std::vector<WorkerInfo>&) const override {
    StepPlan p;
    p.total = o_.epochs();
    p.fine = false;
    return p;
  }
  std::string describe(const StepPlan&) const override {
    return fmt::format("split: bottom {} weights on the workers{}, {} on the coordinator; labels={}, "
                       "schedule={}, pipeline={}",
                       count_parameters(*model_.bottom),
                       ushaped_ ? fmt::format(" (+ head {})", count_parameters(*model_.head)) : std::string(),
                       count_parameters(*model_.top), enum_name(o_.labels()), enum_name(o_.schedule()), o_.pipeline());
  }
  Metrics run_round(Cohort& cohort, const RunContext& ctx, const RoundSteps& steps) override {
    const uint32_t round = steps.round;
    // The workers' optimiser state is worth its bytes only when it is kept: for checkpoints, or
    // to roll a failed round back.
    want_state_ = static_cast<bool>(ctx.checkpoint) || ctx.round_retries > 0;
    const auto t0 = Clock::now();
    stats_ = RoundStats{};
    const auto workers = cohort.workers_by_name();
    std::vector<Failure> failures;
    if (o_.schedule() == Schedule::kSequential) {
      for (const auto& w : workers) {
        auto f = run_exchange(cohort, round, {w});
        failures.insert(failures.end(), f.begin(), f.end());
      }
    } else {
      failures = run_exchange(cohort, round, workers);
    }
    if (stats_.ok == 0) {
      FEDRA_FAIL("split round {}: no worker completed its turn: {}", round, describe_failures(failures));
    }
    Metrics line = round_metrics(workers.size(), failures, Seconds(Clock::now() - t0).count());
    line.emplace_back("epoch", static_cast<int64_t>(round));
    load_relay();
    return line;
  }
  torch::nn::Sequential model() const override { return model_.full; }
  // The coordinator's part and its optimiser ("top/", "top_opt/"), the client-side weights it
  // relays ("relay/"), and each worker's optimiser state as last returned ("worker/NAME/...").
  NamedTensors state() const override {
    NamedTensors s;
    for (const auto& [name, t] : model_state(*model_.top)) s.emplace_back("top/" + name, t.clone());
    append_prefixed(s, "top_opt/", top_.opt->state());
    append_prefixed(s, "relay/", clone_state(relay_));
    for (const auto& [name, opt] : worker_opt_) append_prefixed(s, "worker/" + name + "/", clone_state(opt));
    return s;
  }
  void restore(const NamedTensors& state) override {
    NamedTensors all = state;
    load_model_state(*model_.top, take_prefixed(all, "top/"));
    top_.opt->load_state(take_prefixed(all, "top_opt/"));
    NamedTensors relay = take_prefixed(all, "relay/");
    check_layout(relay_, relay);
    relay_ = std::move(relay);
    load_relay();
    worker_opt_.clear();
    opt_holder_.clear();  // every worker takes up its record with its next turn
    NamedTensors workers = take_prefixed(all, "worker/");
    for (auto& [name, t] : workers) {
      const size_t slash = name.find('/');
      FEDRA_REQUIRE(slash != std::string::npos, "the checkpoint's worker state '{}' names no worker", name);
      worker_opt_[name.substr(0, slash)].emplace_back(name.substr(slash + 1), std::move(t));
    }
    FEDRA_REQUIRE(all.empty(), "the checkpoint holds '{}', which split does not keep", all.front().first);
  }

 private:
  // A worker's turn in progress.
  struct Turn {
    std::string name;
    int64_t first = 0, count = 0;
    int64_t next_act = 0;  // the step whose activations come next
    bool active = true;
    struct Pending {  // U-shaped: a middle forward awaiting its output's gradient
      at::Tensor input, output;
      uint64_t version = 0;
    };
    std::map<int64_t, Pending> pending;
  };

  struct RoundStats {
    double loss_sum = 0, examples = 0, correct = 0;
    int64_t steps = 0, recomputes = 0, worker_recomputes = 0, ok = 0;
    double top_s = 0, cut_bytes = 0;
    double worker_compute_ms = 0, worker_wait_ms = 0, rtt_ms = 0;
  };

  // Each worker's turn: its steps of this round, the relayed weights, its optimisers' record.
  std::vector<Instruction> turns(Cohort& cohort, uint32_t round, const std::vector<WorkerInfo>& workers) {
    turns_.clear();
    std::vector<Instruction> instructions;
    const WorkerId last = last_worker_id(cohort);
    for (const auto& w : workers) {
      Turn t;
      t.name = w.name;
      const int64_t per_epoch = steps_per_epoch(w.num_examples, o_.batch_size());
      t.count = o_.max_steps() > 0 ? std::min(o_.max_steps(), per_epoch) : per_epoch;
      t.first = static_cast<int64_t>(round - 1) * per_epoch;
      t.next_act = t.first;
      TurnIns turn;
      turn.round = round;
      turn.first = t.first;
      turn.steps = t.count;
      turn.last = w.id == last;
      turn.weights = relay_;
      turn.want_state = want_state_;
      const auto held = opt_holder_.find(w.name);
      if (held == opt_holder_.end() || held->second != w.id) {
        // This worker's optimisers may not be what the record says (a resume, a rolled-back
        // round, a worker that rejoined): it takes up the record (none: fresh optimisers).
        const auto rec = worker_opt_.find(w.name);
        turn.set_opt_state = want_state_ || rec != worker_opt_.end();
        if (rec != worker_opt_.end()) turn.opt_state = rec->second;
      }
      instructions.push_back({w.id, turn.encode()});
      turns_[w.id] = std::move(t);
    }
    return instructions;
  }

  // A worker's turn ended: its client-side weights, relayed to the next (sequential) or averaged.
  void on_done(const WorkerInfo& w, Message&& m, WeightedAverage& average) {
    last_progress_ = Clock::now();
    Turn& t = turns_.at(w.id);
    TurnDone done = TurnDone::decode(std::move(m), w.name);
    if (want_state_) {
      worker_opt_[w.name] = std::move(done.opt_state);
      opt_holder_[w.name] = w.id;
    }
    FEDRA_REQUIRE(t.next_act == t.first + t.count && t.pending.empty(),
                  "{} ended its turn after {} of {} steps", w.name, t.next_act - t.first, t.count);
    try {
      check_layout(relay_, done.weights);
      check_finite(done.weights);
    } catch (const Error& e) {
      FEDRA_FAIL("rejected client-side weights from {}: {}", w.name, e.what());
    }
    stats_.worker_compute_ms = std::max(stats_.worker_compute_ms, done.compute_ms);
    stats_.worker_wait_ms = std::max(stats_.worker_wait_ms, done.wait_ms);
    stats_.rtt_ms = std::max(stats_.rtt_ms, done.rtt_ms);
    stats_.worker_recomputes += done.recomputes;
    ++stats_.ok;
    if (o_.schedule() == Schedule::kSequential) {
      relay_ = std::move(done.weights);  // the next worker starts from these
    } else {
      average.add(done.weights, static_cast<double>(std::max<int64_t>(1, done.examples)));
    }
  }

  std::vector<Failure> run_exchange(Cohort& cohort, uint32_t round, const std::vector<WorkerInfo>& workers) {
    std::vector<Instruction> instructions = turns(cohort, round, workers);
    WeightedAverage average;
    const auto step_timeout = o_.step_timeout_ms();
    last_progress_ = Clock::now();
    std::string abort_reason;
    Exchange ex;
    ex.deadline = [&] { return last_progress_ + step_timeout; };
    ex.on_part = [&](const WorkerInfo& w, Message&& m) {
      last_progress_ = Clock::now();
      Turn& t = turns_.at(w.id);
      if (!t.active) return;
      if (m.kind == kAct) {
        on_act(cohort, w, t, std::move(m));
      } else if (m.kind == kOutGrad && ushaped_) {
        on_outgrad(cohort, w, t, std::move(m));
      } else {
        FEDRA_FAIL("unexpected '{}' from {} during a split turn", m.kind, w.name);
      }
    };
    ex.on_reply = [&](const WorkerInfo& w, Message&& m) { on_done(w, std::move(m), average); };
    ex.on_failure = [&](const Failure& f) {
      auto it = turns_.find(f.worker);
      if (it == turns_.end() || !it->second.active) return;
      it->second.active = false;
      it->second.pending.clear();
      if (!abort_reason.empty()) return;
      size_t left = 0;
      for (const auto& [id, t] : turns_) left += t.active ? 1 : 0;
      if (o_.failure().on_failure() == OnFailure::kContinue &&
          (o_.schedule() == Schedule::kSequential || static_cast<int64_t>(left) >= o_.failure().min_workers())) {
        spdlog::warn("split round {}: going on without {} ({}); the top keeps the updates its "
                     "steps made", round, f.name, f.message);
        return;
      }
      abort_reason = fmt::format("{} failed mid-turn: {}", f.name, f.message);
      for (auto& [id, t] : turns_) {
        if (t.active) cohort.cancel(id, "split round failed: " + abort_reason);
      }
    };
    const auto failures = cohort.exchange(std::move(instructions), ex);
    if (!abort_reason.empty()) {
      FEDRA_FAIL("split round {} failed: {}{}", round, abort_reason,
                 o_.failure().on_failure() == OnFailure::kFail ? " (set split.on_failure=continue to go on without a lost worker)"
                                           : "");
    }
    if (o_.schedule() == Schedule::kParallel && average.count() > 0) relay_ = average.take_average();
    return failures;
  }

  static WorkerId last_worker_id(const Cohort& cohort) {
    WorkerId id = 0;
    std::string name;
    for (const auto& w : cohort.workers()) {
      if (w.name >= name) {
        name = w.name;
        id = w.id;
      }
    }
    return id;
  }

  void check_step(const WorkerInfo& w, const Turn& t, const Message& m) const {
    FEDRA_REQUIRE(static_cast<int64_t>(m.step) == t.next_act && t.next_act < t.first + t.count,
                  "{} sent activations for step {}, expected step {} (its turn is steps {}..{})", w.name,
                  m.step, t.next_act, t.first, t.first + t.count - 1);
  }

  at::Tensor checked_activation(const WorkerInfo& w, const at::Tensor& act) const {
    FEDRA_REQUIRE(act.dim() >= 1 && act.size(0) > 0 && act.scalar_type() == at::kFloat,
                  "activations from {} are {}; expected float32 [batch, ...]", w.name, describe_tensor(act));
    check_finite({{"act", act}});
    return act;
  }

  void on_act(Cohort& cohort, const WorkerInfo& w, Turn& t, Message&& m) {
    check_step(w, t, m);
    const CutMessage in = CutMessage::decode(std::move(m), kAct, w.name);
    const at::Tensor act = checked_activation(w, in.tensor);
    const auto c0 = Clock::now();
    at::Tensor a = act.detach().requires_grad_(true);
    stats_.cut_bytes += tensor_bytes(act);
    CutMessage reply;
    reply.step = in.step;
    if (o_.exchange_only()) {
      if (!constant_grad_.defined() || constant_grad_.sizes() != act.sizes()) constant_grad_ = at::full_like(act, 1e-6);
      ++stats_.steps;
      stats_.examples += static_cast<double>(act.size(0));
      reply.tensor = constant_grad_;
    } else if (!ushaped_) {
      const at::Tensor& y = in.labels;
      FEDRA_REQUIRE(y.defined(), "activations from {} came without their labels", w.name);
      FEDRA_REQUIRE(y.dim() >= 1 && y.size(0) == act.size(0), "labels from {} are {} for activations {}",
                    w.name, describe_tensor(y), describe_tensor(act));
      at::Tensor loss;
      at::Tensor logits;
      guarded(fmt::format("activations {} from {} do not fit the top of '{}'", describe_tensor(act), w.name,
                          job().model),
              [&] {
                logits = top_.net->forward(a);
                loss = compute_loss(logits, y, job().loss);
              });
      top_.zero_grad();
      loss.backward();
      top_.step();
      const auto n = static_cast<double>(act.size(0));
      stats_.loss_sum += loss.item<double>() * n;
      stats_.examples += n;
      if (job().loss == "ce") stats_.correct += logits.argmax(1).eq(y).sum().item<double>();
      ++stats_.steps;
      reply.tensor = a.grad();
    } else {
      at::Tensor out = guarded(fmt::format("activations {} from {} do not fit the middle of '{}'",
                                           describe_tensor(act), w.name, job().model),
                               [&] { return top_.net->forward(a); });
      t.pending[t.next_act] = {a, out, top_.updates()};
      reply.tensor = out.detach();
    }
    stats_.top_s += Seconds(Clock::now() - c0).count();
    stats_.cut_bytes += tensor_bytes(reply.tensor);
    ++t.next_act;
    cohort.post(w.id, reply.encode(ushaped_ ? kOut : kGrad));
  }

  void on_outgrad(Cohort& cohort, const WorkerInfo& w, Turn& t, Message&& message) {
    const CutMessage m = CutMessage::decode(std::move(message), kOutGrad, w.name);
    const auto it = t.pending.find(static_cast<int64_t>(m.step));
    FEDRA_REQUIRE(it != t.pending.end(), "{} sent an output gradient for step {}, which is not pending",
                  w.name, m.step);
    Turn::Pending p = std::move(it->second);
    t.pending.erase(it);
    const at::Tensor& g = m.tensor;
    FEDRA_REQUIRE(g.sizes() == p.output.sizes() && g.scalar_type() == p.output.scalar_type(),
                  "output gradient from {} is {}, the output was {}", w.name, describe_tensor(g),
                  describe_tensor(p.output));
    check_finite({{"grad", g}});
    const auto c0 = Clock::now();
    const bool redone = backward_through(top_, p.output, p.version, g, graphs_break_, [&] {
      p.input = p.input.detach().requires_grad_(true);
      return top_.net->forward(p.input);
    });
    stats_.recomputes += redone ? 1 : 0;
    top_.step();
    stats_.top_s += Seconds(Clock::now() - c0).count();
    stats_.loss_sum += m.loss * m.examples;
    stats_.examples += m.examples;
    stats_.correct += m.correct.value_or(0);
    ++stats_.steps;
    CutMessage reply;
    reply.step = m.step;
    reply.tensor = p.input.grad();
    stats_.cut_bytes += tensor_bytes(g) + tensor_bytes(reply.tensor);
    cohort.post(w.id, reply.encode(kGrad));
  }

  Metrics round_metrics(size_t asked, const std::vector<Failure>& failures, double fit_s) const {
    const RoundStats& s = stats_;
    const double steps = static_cast<double>(std::max<int64_t>(1, s.steps));
    Metrics line;
    line.emplace_back("status", std::string("ok"));
    line.emplace_back("train_loss", s.examples > 0 ? s.loss_sum / s.examples : std::nan(""));
    if (job().loss == "ce") line.emplace_back("train_accuracy", s.examples > 0 ? s.correct / s.examples : std::nan(""));
    line.emplace_back("train_examples", static_cast<int64_t>(s.examples));
    line.emplace_back("steps", s.steps);
    line.emplace_back("workers_asked", static_cast<int64_t>(asked));
    line.emplace_back("workers_ok", s.ok);
    line.emplace_back("workers_failed", static_cast<int64_t>(failures.size()));
    if (!failures.empty()) line.emplace_back("failures", describe_failures(failures));
    line.emplace_back("step_ms", 1000.0 * fit_s / steps);
    line.emplace_back("coordinator_ms", 1000.0 * s.top_s / steps);
    line.emplace_back("worker_compute_ms", s.worker_compute_ms);
    line.emplace_back("worker_wait_ms", s.worker_wait_ms);
    line.emplace_back("rtt_ms", s.rtt_ms);
    line.emplace_back("cut_bytes", static_cast<int64_t>(s.cut_bytes));
    line.emplace_back("recomputes", s.recomputes);
    line.emplace_back("worker_recomputes", s.worker_recomputes);
    return line;
  }

  // Puts the client-side weights the coordinator relays into its copy of the whole network.
  void load_relay() {
    load_model_state(*model_.bottom, state_for(relay_, *model_.bottom));
    if (ushaped_) load_model_state(*model_.head, state_for(relay_, *model_.head));
  }

  SplitOptions o_;
  bool ushaped_ = false;
  SplitModel model_;
  Part top_;  // the top, or the middle when U-shaped
  NamedTensors relay_;  // client-side weights: the last turn's (sequential) or the average
  bool want_state_ = false;                          // workers return their optimiser state
  std::map<std::string, NamedTensors> worker_opt_;   // by worker name: its optimisers' state
  std::map<std::string, WorkerId> opt_holder_;       // by name: the connection that state came from
  std::map<WorkerId, Turn> turns_;
  RoundStats stats_;
  Clock::time_point last_progress_;
  bool graphs_break_ = false;
  at::Tensor constant_grad_;  // exchange_only
};

}  // namespace

std::unique_ptr<CoordinatorStrategy> new_coordinator(const Job& job, const SplitOptions& options) {
  return std::make_unique<SplitCoordinator>(job, options);
}

}  // namespace fedra::split
