#include "strategies/split/split.h"

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

#include "core/aggregation.h"
#include "core/batching.h"
#include "core/cohort.h"
#include "core/model.h"
#include "core/optimizer.h"
#include "core/tensor_checks.h"
#include "core/training.h"

namespace fedra::split {

namespace {

using Seconds = std::chrono::duration<double>;


// One part of the network with its own optimiser.
struct Part {
  torch::nn::Sequential net{nullptr};
  std::optional<ModuleOptimizer> opt;

  void init(torch::nn::Sequential n, const OptimizerConfig& config) {
    net = std::move(n);
    opt.emplace(*net, config);
  }
  void zero_grad() { opt->zero_grad(); }
  void step() { opt->step(); }
  uint64_t updates() const { return opt->updates(); }
};

// The entries of `state` that `module` has, in the module's order.
NamedTensors state_for(const NamedTensors& state, const torch::nn::Module& module) {
  std::map<std::string, const at::Tensor*> by_name;
  for (const auto& [n, t] : state) by_name[n] = &t;
  NamedTensors out;
  for (const auto& [n, t] : model_state(module)) {
    const auto it = by_name.find(n);
    FEDRA_REQUIRE(it != by_name.end(), "client-side weights lack '{}'", n);
    out.emplace_back(n, *it->second);
  }
  return out;
}

NamedTensors clone_state(const NamedTensors& state) {
  NamedTensors out;
  for (const auto& [n, t] : state) out.emplace_back(n, t.clone());
  return out;
}

// Backpropagates `grad` through a saved forward pass. If the part's weights changed since that
// forward (pipelining) and autograd refuses the graph because a tensor it saved was updated in
// place, redoes the forward with `recompute()` (at the current weights) and backpropagates that.
// Returns true if it had to recompute. An intact graph (e.g. a part whose only weighted layer
// reads the raw input saves no weights) gives the gradient at the weights the forward used.
template <class Recompute>
bool backward_through(Part& part, at::Tensor& output, uint64_t version, const at::Tensor& grad,
                      bool& graphs_break, Recompute&& recompute) {
  part.zero_grad();
  if (version != part.updates()) {
    if (!graphs_break) {
      try {
        output.backward(grad);
        return false;
      } catch (const c10::Error& e) {
        if (std::string(e.what()).find("modified by an inplace operation") == std::string::npos) throw;
        graphs_break = true;  // this part's graphs never survive an update: stop trying
        part.zero_grad();
      }
    }
    output = recompute();
    output.backward(grad);
    return true;
  }
  output.backward(grad);
  return false;
}

double tensor_bytes(const at::Tensor& t) { return static_cast<double>(t.numel() * t.element_size()); }

// Runs f, turning a LibTorch error (wrong shape, wrong dtype) into an Error saying what was fed.
template <class F>
auto guarded(const std::string& what, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    FEDRA_FAIL("{}: {}", what, msg.substr(0, msg.find('\n')));
  }
}

// ---------------------------------------------------------------------------------------------
// Coordinator

class SplitCoordinator : public CoordinatorStrategy {
 public:
  explicit SplitCoordinator(const Job& job) : job_(job), o_(parse_options<SplitOptions>(job.options)) {
    check_loss_name(job.loss);
    ushaped_ = o_.labels() == "worker";
  }

  void run(Cohort& cohort, RunContext& ctx) override {
    model_ = split_model(job_.model, job_.seed, ushaped_);
    top_.init(model_.top, OptimizerConfig::from(o_));
    relay_ = clone_state(model_state(*model_.bottom));
    if (ushaped_) {
      for (auto& nt : clone_state(model_state(*model_.head))) relay_.push_back(std::move(nt));
    }
    spdlog::info("split: bottom {} weights on the workers{}, {} on the coordinator; labels={}, "
                 "schedule={}, pipeline={}",
                 count_parameters(*model_.bottom),
                 ushaped_ ? fmt::format(" (+ head {})", count_parameters(*model_.head)) : std::string(),
                 count_parameters(*model_.top), o_.labels(), o_.schedule(), o_.pipeline());

    const auto wait = ctx.wait_timeout;
    const auto rounds = static_cast<uint32_t>(o_.epochs());
    for (uint32_t round = 1; round <= rounds; ++round) {
      if (ctx.stop_requested()) FEDRA_FAIL("interrupted");
      if (!cohort.wait_for_workers(static_cast<size_t>(o_.min_workers()), Clock::now() + wait)) {
        FEDRA_THROW(ErrorKind::kOverloaded, "round {}: only {} of {} workers connected within {} s",
                    round, cohort.size(), o_.min_workers(), wait.count() / 1000.0);
      }
      const auto t0 = Clock::now();
      stats_ = RoundStats{};
      auto workers = cohort.workers();
      std::sort(workers.begin(), workers.end(),
                [](const WorkerInfo& a, const WorkerInfo& b) { return a.name < b.name; });
      std::vector<Failure> failures;
      if (o_.schedule() == "sequential") {
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
      if (ctx.test_set != nullptr && o_.eval_every() > 0 &&
          (round % static_cast<uint32_t>(o_.eval_every()) == 0 || round == rounds)) {
        const auto e0 = Clock::now();
        const EvalStats s = evaluate_model(model_.full, *ctx.test_set, job_.loss);
        line.emplace_back("test_accuracy", s.accuracy);
        line.emplace_back("test_loss", s.loss);
        line.emplace_back("eval_s", Seconds(Clock::now() - e0).count());
      }
      ctx.report_round(round, rounds, std::move(line));
    }
    if (!ctx.out_dir.empty()) save_model_file(ctx.out_dir + "/model.bin", model_state(*model_.full));
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

  std::vector<Failure> run_exchange(Cohort& cohort, uint32_t round, const std::vector<WorkerInfo>& workers) {
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
      Message m(kRun, round);
      m.step = static_cast<uint64_t>(t.first);
      m.tensors = relay_;
      m.options["steps"] = std::to_string(t.count);
      m.options["last"] = w.id == last ? "1" : "0";
      instructions.push_back({w.id, std::move(m)});
      turns_[w.id] = std::move(t);
    }
    WeightedAverage average;
    const auto step_timeout = std::chrono::milliseconds(static_cast<int64_t>(o_.step_timeout() * 1000));
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
    ex.on_reply = [&](const WorkerInfo& w, Message&& m) {
      last_progress_ = Clock::now();
      Turn& t = turns_.at(w.id);
      FEDRA_REQUIRE(m.kind == kDone, "expected '{}' from {}, got '{}'", kDone, w.name, m.kind);
      FEDRA_REQUIRE(t.next_act == t.first + t.count && t.pending.empty(),
                    "{} ended its turn after {} of {} steps", w.name, t.next_act - t.first, t.count);
      try {
        check_layout(relay_, m.tensors);
        check_finite(m.tensors);
      } catch (const Error& e) {
        FEDRA_FAIL("rejected client-side weights from {}: {}", w.name, e.what());
      }
      stats_.worker_compute_ms = std::max(stats_.worker_compute_ms, m.metric_or("compute_ms", 0));
      stats_.worker_wait_ms = std::max(stats_.worker_wait_ms, m.metric_or("wait_ms", 0));
      stats_.rtt_ms = std::max(stats_.rtt_ms, m.metric_or("rtt_ms", 0));
      stats_.worker_recomputes += static_cast<int64_t>(m.metric_or("recomputes", 0));
      ++stats_.ok;
      if (o_.schedule() == "sequential") {
        relay_ = std::move(m.tensors);  // the next worker starts from these
      } else {
        average.add(m.tensors, m.metric_or("examples", 1));
      }
    };
    ex.on_failure = [&](const Failure& f) {
      auto it = turns_.find(f.worker);
      if (it == turns_.end() || !it->second.active) return;
      it->second.active = false;
      it->second.pending.clear();
      if (!abort_reason.empty()) return;
      size_t left = 0;
      for (const auto& [id, t] : turns_) left += t.active ? 1 : 0;
      if (o_.on_failure() == "continue" &&
          (o_.schedule() == "sequential" || static_cast<int64_t>(left) >= o_.min_workers())) {
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
                 o_.on_failure() == "fail" ? " (set split.on_failure=continue to go on without a lost worker)"
                                           : "");
    }
    if (o_.schedule() == "parallel" && average.count() > 0) relay_ = average.take_average();
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

  at::Tensor checked_activation(const WorkerInfo& w, const Message& m) const {
    const at::Tensor& act = m.tensor("act");
    FEDRA_REQUIRE(act.dim() >= 1 && act.size(0) > 0 && act.scalar_type() == at::kFloat,
                  "activations from {} are {}; expected float32 [batch, ...]", w.name, describe_tensor(act));
    check_finite({{"act", act}});
    return act;
  }

  void on_act(Cohort& cohort, const WorkerInfo& w, Turn& t, Message&& m) {
    check_step(w, t, m);
    const at::Tensor act = checked_activation(w, m);
    const auto c0 = Clock::now();
    at::Tensor a = act.detach().requires_grad_(true);
    stats_.cut_bytes += tensor_bytes(act);
    Message reply(ushaped_ ? kOut : kGrad);
    reply.step = m.step;
    if (o_.exchange_only()) {
      if (!constant_grad_.defined() || constant_grad_.sizes() != act.sizes()) constant_grad_ = at::full_like(act, 1e-6);
      ++stats_.steps;
      stats_.examples += static_cast<double>(act.size(0));
      reply.tensors.emplace_back("grad", constant_grad_);
    } else if (!ushaped_) {
      const at::Tensor& y = m.tensor("labels");
      FEDRA_REQUIRE(y.dim() >= 1 && y.size(0) == act.size(0), "labels from {} are {} for activations {}",
                    w.name, describe_tensor(y), describe_tensor(act));
      at::Tensor loss;
      at::Tensor logits;
      guarded(fmt::format("activations {} from {} do not fit the top of '{}'", describe_tensor(act), w.name,
                          job_.model),
              [&] {
                logits = top_.net->forward(a);
                loss = compute_loss(logits, y, job_.loss);
              });
      top_.zero_grad();
      loss.backward();
      top_.step();
      const auto n = static_cast<double>(act.size(0));
      stats_.loss_sum += loss.item<double>() * n;
      stats_.examples += n;
      if (job_.loss == "ce") stats_.correct += logits.argmax(1).eq(y).sum().item<double>();
      ++stats_.steps;
      reply.tensors.emplace_back("grad", a.grad());
    } else {
      at::Tensor out = guarded(fmt::format("activations {} from {} do not fit the middle of '{}'",
                                           describe_tensor(act), w.name, job_.model),
                               [&] { return top_.net->forward(a); });
      t.pending[t.next_act] = {a, out, top_.updates()};
      reply.tensors.emplace_back("out", out.detach());
    }
    stats_.top_s += Seconds(Clock::now() - c0).count();
    stats_.cut_bytes += tensor_bytes(reply.tensors[0].second);
    ++t.next_act;
    cohort.post(w.id, reply);
  }

  void on_outgrad(Cohort& cohort, const WorkerInfo& w, Turn& t, Message&& m) {
    const auto it = t.pending.find(static_cast<int64_t>(m.step));
    FEDRA_REQUIRE(it != t.pending.end(), "{} sent an output gradient for step {}, which is not pending",
                  w.name, m.step);
    Turn::Pending p = std::move(it->second);
    t.pending.erase(it);
    const at::Tensor& g = m.tensor("grad");
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
    const double n = m.metric("examples");
    stats_.loss_sum += m.metric("loss") * n;
    stats_.examples += n;
    stats_.correct += m.metric_or("correct", 0);
    ++stats_.steps;
    Message reply(kGrad);
    reply.step = m.step;
    reply.tensors.emplace_back("grad", p.input.grad());
    stats_.cut_bytes += tensor_bytes(g) + tensor_bytes(p.input.grad());
    cohort.post(w.id, reply);
  }

  Metrics round_metrics(size_t asked, const std::vector<Failure>& failures, double fit_s) const {
    const RoundStats& s = stats_;
    const double steps = static_cast<double>(std::max<int64_t>(1, s.steps));
    Metrics line;
    line.emplace_back("status", std::string("ok"));
    line.emplace_back("train_loss", s.examples > 0 ? s.loss_sum / s.examples : std::nan(""));
    if (job_.loss == "ce") line.emplace_back("train_accuracy", s.examples > 0 ? s.correct / s.examples : std::nan(""));
    line.emplace_back("train_examples", static_cast<int64_t>(s.examples));
    line.emplace_back("steps", s.steps);
    line.emplace_back("workers_asked", static_cast<int64_t>(asked));
    line.emplace_back("workers_ok", s.ok);
    line.emplace_back("workers_failed", static_cast<int64_t>(failures.size()));
    if (!failures.empty()) line.emplace_back("failures", describe_failures(failures));
    line.emplace_back("fit_s", fit_s);
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

  Job job_;
  SplitOptions o_;
  bool ushaped_ = false;
  SplitModel model_;
  Part top_;  // the top, or the middle when U-shaped
  NamedTensors relay_;  // client-side weights: the last turn's (sequential) or the average
  std::map<WorkerId, Turn> turns_;
  RoundStats stats_;
  Clock::time_point last_progress_;
  bool graphs_break_ = false;
  at::Tensor constant_grad_;  // exchange_only
};

// ---------------------------------------------------------------------------------------------
// Worker

class SplitWorker : public WorkerStrategy {
 public:
  explicit SplitWorker(const Job& job) : job_(job), o_(parse_options<SplitOptions>(job.options)) {
    check_loss_name(job.loss);
    ushaped_ = o_.labels() == "worker";
    SplitModel m = split_model(job.model, job.seed, ushaped_);
    bottom_.init(m.bottom, OptimizerConfig::from(o_));
    if (ushaped_) head_.init(m.head, OptimizerConfig::from(o_));
  }

  Message handle(const Message& request, WorkerContext& ctx) override {
    FEDRA_REQUIRE(request.kind == kRun, "split worker cannot handle '{}'", request.kind);
    FEDRA_REQUIRE(ctx.link != nullptr, "split needs the worker link");
    FEDRA_REQUIRE(ctx.data != nullptr && ctx.data->size() > 0, "worker {} has no training data", ctx.name);
    link_ = ctx.link;
    if (!batches_) batches_.emplace(o_.batches(), o_.batch_size(), job_.seed, ctx.name);
    load_model_state(*bottom_.net, state_for(request.tensors, *bottom_.net));
    if (ushaped_) load_model_state(*head_.net, state_for(request.tensors, *head_.net));
    const int64_t first = static_cast<int64_t>(request.step);
    const OptionMap opts(kRun, request.options);
    const int64_t count = opts.get_int("steps", 0);
    const bool last = opts.get_int("last", 0) == 1;
    timeout_ = std::chrono::milliseconds(static_cast<int64_t>(o_.step_timeout() * 1000));
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
      Message act(kAct);
      act.step = static_cast<uint64_t>(s);
      if (last && s == o_.inject_bad_shape()) {
        spdlog::warn("inject_bad_shape={}: sending activations one feature short", s);
        act.tensors.emplace_back("act", f.act.detach().narrow(1, 0, f.act.size(1) - 1));
      } else {
        act.tensors.emplace_back("act", f.act.detach());
      }
      if (!ushaped_) act.tensors.emplace_back("labels", f.y);
      examples_ += f.x.size(0);
      compute_s_ += Seconds(Clock::now() - t0).count();
      f.sent = Clock::now();
      link_->send(act);
      if (last && s == o_.inject_exit()) {
        spdlog::warn("inject_exit={}: this worker dies mid-turn", s);
        std::_Exit(3);
      }
      inflight_.push_back(std::move(f));
      while (static_cast<int64_t>(inflight_.size()) >= o_.pipeline()) complete_one();
    }
    while (!inflight_.empty()) complete_one();

    Message done(kDone, request.round);
    done.tensors = model_state(*bottom_.net);
    if (ushaped_) {
      for (auto& nt : model_state(*head_.net)) done.tensors.push_back(std::move(nt));
    }
    const double n = static_cast<double>(std::max<int64_t>(1, count));
    done.metrics["examples"] = static_cast<double>(examples_);
    done.metrics["steps"] = static_cast<double>(count);
    done.metrics["compute_ms"] = 1000 * compute_s_ / n;
    done.metrics["wait_ms"] = 1000 * wait_s_ / n;
    done.metrics["rtt_ms"] = 1000 * rtt_s_ / n;
    done.metrics["recomputes"] = static_cast<double>(recomputes_);
    return done;
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
        run_head(m);
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
      const at::Tensor& g = m.tensor("grad");
      FEDRA_REQUIRE(g.sizes() == f.act.sizes() && g.scalar_type() == f.act.scalar_type(),
                    "cut gradient for step {} is {}, the activations were {}", m.step, describe_tensor(g),
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
  void run_head(const Message& m) {
    auto it = std::find_if(inflight_.begin(), inflight_.end(),
                           [&](const InFlight& f) { return f.step == static_cast<int64_t>(m.step); });
    FEDRA_REQUIRE(it != inflight_.end() && !it->head_done, "middle output for step {} was not expected", m.step);
    it->head_done = true;
    at::Tensor o = m.tensor("out").detach().requires_grad_(true);
    at::Tensor logits = guarded(fmt::format("the middle's output {} does not fit the head of '{}'",
                                            describe_tensor(o), job_.model),
                                [&] { return head_.net->forward(o); });
    at::Tensor loss = compute_loss(logits, it->y, job_.loss);
    head_.zero_grad();
    loss.backward();
    head_.step();
    Message up(kOutGrad);
    up.step = m.step;
    up.tensors.emplace_back("grad", o.grad());
    const auto n = static_cast<double>(it->y.size(0));
    up.metrics["loss"] = loss.item<double>();
    up.metrics["examples"] = n;
    if (job_.loss == "ce") up.metrics["correct"] = logits.argmax(1).eq(it->y).sum().item<double>();
    link_->send(up);
  }

  Job job_;
  SplitOptions o_;
  bool ushaped_ = false;
  Part bottom_, head_;
  std::optional<BatchOrder> batches_;
  WorkerLink* link_ = nullptr;
  std::chrono::milliseconds timeout_{60000};
  std::deque<InFlight> inflight_;
  double compute_s_ = 0, wait_s_ = 0, rtt_s_ = 0;
  int64_t examples_ = 0, recomputes_ = 0;
  bool graphs_break_ = false;
  at::Tensor fixed_act_, fixed_y_;  // exchange_only
};

}  // namespace

void SplitOptions::validate() const {
  FEDRA_REQUIRE(labels_ == "coordinator" || labels_ == "worker",
                "split.labels must be coordinator or worker (U-shaped), got '{}'", labels_);
  FEDRA_REQUIRE(schedule_ == "sequential" || schedule_ == "parallel",
                "split.schedule must be sequential or parallel, got '{}'", schedule_);
  FEDRA_REQUIRE(epochs_ >= 1, "split.epochs must be >= 1, got {}", epochs_);
  FEDRA_REQUIRE(max_steps_ >= 0, "split.max_steps must be >= 0, got {}", max_steps_);
  FEDRA_REQUIRE(batch_size_ >= 1, "split.batch_size must be >= 1, got {}", batch_size_);
  FEDRA_REQUIRE(batches_ == "shuffle" || batches_ == "sequential",
                "split.batches must be shuffle or sequential, got '{}'", batches_);
  OptimizerConfig::from(*this).validate();
  FEDRA_REQUIRE(pipeline_ >= 1, "split.pipeline must be >= 1 (micro-batches in flight), got {}", pipeline_);
  FEDRA_REQUIRE(on_failure_ == "fail" || on_failure_ == "continue",
                "split.on_failure must be fail or continue, got '{}'", on_failure_);
  FEDRA_REQUIRE(min_workers_ >= 1, "split.min_workers must be >= 1, got {}", min_workers_);
  FEDRA_REQUIRE(step_timeout_ > 0, "split.step_timeout must be > 0 seconds, got {}", step_timeout_);
  FEDRA_REQUIRE(eval_every_ >= 0, "split.eval_every must be >= 0, got {}", eval_every_);
  FEDRA_REQUIRE(!exchange_only_ || labels_ == "coordinator", "split.exchange_only needs labels=coordinator");
  FEDRA_REQUIRE(inject_exit_ >= -1, "split.inject_exit must be a step or -1, got {}", inject_exit_);
  FEDRA_REQUIRE(inject_bad_shape_ >= -1, "split.inject_bad_shape must be a step or -1, got {}", inject_bad_shape_);
}

StrategyInfo split_strategy() {
  StrategyInfo info;
  info.name = "split";
  info.description = "Split learning: bottom and raw data on the worker, top on the coordinator, backprop across the cut";
  info.options = option_specs<SplitOptions>();
  info.make_coordinator = [](const Job& job) { return std::make_unique<SplitCoordinator>(job); };
  info.make_worker = [](const Job& job) { return std::make_unique<SplitWorker>(job); };
  return info;
}

}  // namespace fedra::split
