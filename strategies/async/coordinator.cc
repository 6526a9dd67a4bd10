// The asynchronous strategies' coordinator half: the dispatch loop, the simulated clock, the
// staleness-weighted server updates.
#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <tuple>

#include <spdlog/spdlog.h>

#include <torch/torch.h>

#include "core/data/batching.h"
#include "core/data/tensor_checks.h"
#include "core/loops/cohort.h"
#include "core/model/export.h"
#include "core/model/model.h"
#include "core/model/script_model.h"
#include "core/training/training.h"
#include "strategies/async/internal.h"
#include "strategies/async/messages.h"

namespace fedra::async {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

enum class Event { kUpdate = 0, kLost = 1, kWake = 2 };

class AsyncCoordinator : public CoordinatorStrategy {
 public:
  AsyncCoordinator(const Job& job, AsyncOptions options)
      : job_(job), o_(std::move(options)), server_(o_.server()),
        fleet_(std::make_shared<Fleet>(o_.fleet().fleet(), job.seed)), rng_(job.seed ^ 0xA5F1ULL) {
    check_loss_name(job.loss);
    model_ = build_model(job.model, job.seed);
    for (auto& [name, t] : model_state(*model_)) global_.emplace_back(name, t.clone());
    for (const auto& [name, t] : global_) model_bytes_ += t.nbytes();
  }

  bool resumable() const override { return true; }

  void run(Cohort& cohort, RunContext& ctx) override {
    const char* name = o_.mode == Mode::kFedAsync ? "fedasync" : "fedbuff";
    const auto total = static_cast<uint32_t>(o_.updates());
    if (ctx.resume_round > 0) {
      FEDRA_REQUIRE(ctx.resume_round <= total, "the checkpoint is of update {}, but the job has {} updates",
                    ctx.resume_round, total);
      restore(std::move(ctx.resume_state));
      spdlog::info("resuming after server update {} of {} (simulated time {:.1f} s); updates in flight at the "
                   "checkpoint are lost and their clients start afresh",
                   version_, total, now_);
    }
    if (version_ >= total) {
      finished(ctx);
      return;
    }
    virtual_ = o_.fleet().virtual_clock();
    start_ = Clock::now();
    wall_offset_ = now_;  // a resumed wall-clock run continues the recorded time
    ctx_ = &ctx;
    cohort_ = &cohort;
    total_ = total;
    for (const WorkerInfo& w : cohort.workers_by_name()) {
      Client c;
      c.id = w.id;
      c.name = w.name;
      c.examples = std::max<int64_t>(w.num_examples, 1);
      index_[w.id] = clients_.size();
      by_name_[w.name] = clients_.size();
      clients_.push_back(std::move(c));
    }
    FEDRA_REQUIRE(!clients_.empty(), "{}: no clients connected", name);
    if (fleet_->active()) {
      spdlog::info("{}: {} clients, fleet {} on the {} clock, concurrency {}", name, clients_.size(), fleet_->spec(),
                   virtual_ ? "virtual" : "wall", o_.concurrency() > 0 ? std::to_string(o_.concurrency()) : "all");
    }

    // The first dispatches travel in the session instructions; the rest are posts.
    std::vector<Instruction> instructions;
    initial_ = &instructions;
    for (Client& c : clients_) {
      Message session(kSession);
      instructions.push_back({c.id, std::move(session)});
    }
    fill(now_);
    // Virtual clock: lost dispatches and wake-ups before the first update are settled now (they
    // need no worker), so the exchange starts with an update to wait for.
    if (virtual_) advance();
    initial_ = nullptr;

    Exchange handlers;
    handlers.on_part = [&](const WorkerInfo& w, Message&& m) { on_update(w, std::move(m)); };
    handlers.on_reply = [&](const WorkerInfo& w, Message&&) {
      Client& c = client(w.id);
      c.active = false;
    };
    handlers.on_failure = [&](const Failure& f) { on_failure(f); };
    handlers.deadline = [&] { return deadline(); };
    handlers.on_deadline = [&] { return on_deadline(); };
    const std::vector<Failure> failures = cohort.exchange(std::move(instructions), handlers);
    cohort_ = nullptr;
    if (ctx.stop_requested()) FEDRA_FAIL("interrupted after server update {}", version_);
    finished(ctx);
    FEDRA_REQUIRE(version_ >= total, "{} stopped after {} of {} server updates: every client's session ended{}",
                  name, version_, total, failures.empty() ? std::string() : ": " + describe_failures(failures));
  }

 private:
  struct Client {
    WorkerId id = 0;
    std::string name;
    int64_t examples = 1;
    bool active = true;  // its session is open
    bool busy = false;   // training an update
    bool posted = false;  // busy with a model sent (not a dispatch the virtual clock knows is lost)
    int64_t base_version = 0;
    double dispatched_at = 0, duration = 0;
    Clock::time_point wall_dispatched;
    std::optional<Message> arrived;  // virtual clock: its update, waiting for its turn
  };

  Client& client(WorkerId id) { return clients_.at(index_.at(id)); }

  double now_wall() const { return wall_offset_ + seconds_since(start_); }

  // --- Dispatch.
  size_t capacity() const {
    size_t active = 0;
    for (const Client& c : clients_) active += c.active ? 1 : 0;
    return o_.concurrency() > 0 ? std::min<size_t>(active, static_cast<size_t>(o_.concurrency())) : active;
  }

  // Starts idle online clients until `concurrency` train; if none is online, wakes up when the
  // first comes back.
  void fill(double t) {
    if (stopping_) return;
    size_t busy = 0;
    for (const Client& c : clients_) busy += c.busy ? 1 : 0;
    const size_t cap = capacity();
    while (busy < cap) {
      std::vector<Client*> idle;
      double back = kInf;
      for (Client& c : clients_) {
        if (!c.active || c.busy) continue;
        if (fleet_->online(c.name, t)) {
          idle.push_back(&c);
        } else {
          back = std::min(back, fleet_->online_at(c.name, t));
        }
      }
      if (idle.empty()) {
        if (std::isfinite(back)) wakes_.insert(back);
        return;
      }
      Client* pick = idle.size() == 1 ? idle[0] : idle[splitmix64(rng_) % idle.size()];
      dispatch(*pick, t);
      ++busy;
    }
  }

  void dispatch(Client& c, double t) {
    c.busy = true;
    c.posted = false;
    c.base_version = version_;
    c.dispatched_at = t;
    c.wall_dispatched = Clock::now();
    ++dispatches_;
    const int64_t steps = o_.local().planned_steps(c.examples);
    const double network = fleet_->network_s(c.name, model_bytes_, model_bytes_);
    c.duration = fleet_->compute_s(c.name, steps) + network;
    if (virtual_) {
      const double off = fleet_->offline_at(c.name, t);
      if (off < t + c.duration) {
        // It will go offline before it finishes: the update is lost then (no need to train it).
        events_.insert({off, c.name, Event::kLost});
        return;
      }
      events_.insert({t + c.duration, c.name, Event::kUpdate});
    }
    c.posted = true;
    Dispatch d;
    d.version = static_cast<uint32_t>(version_);
    d.weights = global_;  // shared: global_ is replaced, never modified, by a server update
    d.seed = worker_seed(job_.seed, static_cast<uint32_t>(dispatches_), c.name);
    if (!virtual_ && fleet_->active()) {
      d.sleep_factor = fleet_->profile(c.name).slowdown - 1.0;
      d.net_s = network;
    }
    Message m = d.encode(initial_ ? kSession : kTrain);
    if (initial_) {
      for (Instruction& ins : *initial_) {
        if (ins.worker == c.id) ins.message = std::move(m);
      }
      return;
    }
    if (!cohort_->post(c.id, m)) {
      c.busy = false;
      c.active = false;
      ++lost_;
      spdlog::warn("{}: its session had ended; its update is lost", c.name);
    }
  }

  // --- Arrivals.
  void on_update(const WorkerInfo& w, Message&& m) {
    Client& c = client(w.id);
    if (stopping_ || !c.busy) return;  // after the last server update, or cancelled meanwhile
    m.expect_kind(kUpdate, w.name);
    FEDRA_REQUIRE(static_cast<int64_t>(m.round) == c.base_version,
                  "{} sent an update of model version {}, but was sent version {}", w.name, m.round, c.base_version);
    if (!virtual_) {
      const double t = now_wall();
      if (fleet_->offline_at(c.name, c.dispatched_at) < t) {
        // The fleet had this device go offline while it trained: the update never made it.
        c.busy = false;
        ++lost_;
        device_s_ += t - c.dispatched_at;
      } else {
        apply(c, std::move(m), t);
      }
      fill(now_wall());
      return;
    }
    c.arrived = std::move(m);
    advance();
  }

  // Virtual clock: processes events in simulated-time order as long as the earliest one's update
  // has arrived (ties by client name), so the order never depends on which process ran faster.
  void advance() {
    while (!stopping_) {
      double wake = wakes_.empty() ? kInf : *wakes_.begin();
      if (events_.empty() && !std::isfinite(wake)) {
        bool any_busy = false;
        for (const Client& c : clients_) any_busy = any_busy || c.busy;
        if (!any_busy) fill(now_);
        return;
      }
      if (events_.empty() || wake < std::get<0>(*events_.begin())) {
        wakes_.erase(wakes_.begin());
        now_ = std::max(now_, wake);
        fill(now_);
        continue;
      }
      const auto [t, name, kind] = *events_.begin();
      Client* c = &clients_.at(by_name_.at(name));
      if (kind == Event::kUpdate && c->active && !c->arrived) return;  // wait for it
      events_.erase(events_.begin());
      now_ = std::max(now_, t);
      if (kind == Event::kLost) {
        c->busy = false;
        ++lost_;
        device_s_ += t - c->dispatched_at;
      } else if (kind == Event::kUpdate && c->arrived) {
        Message m = std::move(*c->arrived);
        c->arrived.reset();
        apply(*c, std::move(m), t);
      }
      fill(now_);
    }
  }

  void apply(Client& c, Message&& m, double t) {
    c.busy = false;
    device_s_ += virtual_ ? c.duration : t - c.dispatched_at;
    const int64_t tau = version_ - c.base_version;
    Update u;
    try {
      u = Update::decode(std::move(m), c.name);
      check_layout(global_, u.tensors);
      check_finite(u.tensors);
      FEDRA_REQUIRE(std::isfinite(u.train_loss), "its train_loss is not finite");
    } catch (const Error& e) {
      ++refused_;
      spdlog::warn("refused the update of {}: {}", c.name, e.what());
      return;
    }
    if (o_.max_staleness() > 0 && tau > o_.max_staleness()) {
      ++refused_;
      spdlog::debug("refused the update of {}: staleness {} > max_staleness {}", c.name, tau, o_.max_staleness());
      return;
    }
    ++applied_;
    window_.add(tau, u.train_loss, u.train_s);
    const double s = o_.staleness_weight(tau);
    if (o_.mode == Mode::kFedAsync) {
      global_ = mix(global_, u.tensors, o_.mixing() * s);
      server_update(t);
      return;
    }
    buffer_.add(global_, u.tensors, s);
    if (buffer_.size() < o_.buffer()) return;
    // The aggregate x + lr D (server_opt none) or x + D for a server optimiser to step on.
    const double lr = o_.server().server_opt() == ServerOpt::kNone
                          ? (o_.server().server_lr() > 0 ? o_.server().server_lr() : 1.0)
                          : 1.0;
    NamedTensors aggregate = buffer_.flush(global_, lr);
    server_.step(global_, aggregate);
    global_ = std::move(aggregate);
    server_update(t);
  }

  // One server update done: the metrics line, evaluation, checkpoint; the end after the last.
  void server_update(double t) {
    ++version_;
    Metrics line;
    line.emplace_back("virtual_time_s", virtual_ ? t : 0.0);
    line.emplace_back("wall_time_s", now_wall());
    window_.report(line);
    line.insert(line.end(), {{"updates_applied", applied_}, {"updates_refused", refused_}, {"updates_lost", lost_},
                             {"dispatches", dispatches_}, {"device_s", device_s_},
                             {"worker_train_s_max", window_.take_train_s()}});
    const bool last = version_ >= static_cast<int64_t>(total_);
    if (o_.eval().due(static_cast<uint32_t>(version_), last) && ctx_->test_set != nullptr) {
      const auto e0 = Clock::now();
      load_model_state(*model_, global_);
      const EvalStats s = evaluate_model(model_, *ctx_->test_set, job_.loss);
      for (const auto& [k, v] : eval_metrics(s)) line.emplace_back(k, v);
      line.emplace_back("eval_s", seconds_since(e0));
    }
    size_t active = 0, gone = 0;
    for (const Client& c : clients_) (c.active ? active : gone) += 1;
    line.insert(line.end(), {{"status", std::string("ok")}, {"workers_ok", static_cast<int64_t>(active)},
                             {"workers_failed", static_cast<int64_t>(gone)}});
    now_ = virtual_ ? t : now_wall();
    ctx_->report_round(static_cast<uint32_t>(version_), total_, std::move(line));
    if (ctx_->checkpoint) ctx_->checkpoint(static_cast<uint32_t>(version_), total_, [&] { return checkpoint_state(); });
    if (last || ctx_->stop_requested()) stop("job completed");
  }

  void stop(const std::string& why) {
    if (stopping_) return;
    stopping_ = true;
    for (Client& c : clients_) {
      c.arrived.reset();
      if (!c.active) continue;
      Message m(kStop);
      m.options["reason"] = why;  // the session's end: no fields beyond the reason
      cohort_->post(c.id, m);
    }
  }

  // --- Failures and deadlines.
  void on_failure(const Failure& f) {
    auto it = index_.find(f.worker);
    if (it == index_.end()) return;
    Client& c = clients_[it->second];
    if (!c.active) return;
    c.active = false;
    if (stopping_) return;
    spdlog::warn("{} left ({}): {}{}", c.name, error_kind_name(f.kind), f.message,
                 c.busy ? "; its update in flight is lost" : "");
    if (c.busy) {
      c.busy = false;
      ++lost_;
      c.arrived.reset();
      for (auto e = events_.begin(); e != events_.end(); ++e) {
        if (std::get<1>(*e) == c.name) {
          events_.erase(e);
          break;
        }
      }
    }
    if (virtual_) {
      advance();
    } else {
      fill(now_wall());
    }
  }

  Deadline deadline() const {
    Deadline d = Clock::now() + std::chrono::hours(24);
    if (stopping_) return Clock::now() + std::chrono::seconds(60);  // the workers' "done"
    const auto timeout = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o_.update_timeout()));
    for (const Client& c : clients_) {
      if (c.active && c.busy && c.posted && !c.arrived) d = std::min(d, c.wall_dispatched + timeout);
    }
    if (!virtual_ && !wakes_.empty()) {
      const double in = *wakes_.begin() - now_wall();
      d = std::min(d, Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                         std::chrono::duration<double>(std::max(in, 0.0))));
    }
    return d;
  }

  bool on_deadline() {
    if (stopping_) return false;
    if (ctx_->stop_requested()) {
      stop("interrupted");
      return true;
    }
    const auto now = Clock::now();
    const auto timeout = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o_.update_timeout()));
    for (Client& c : clients_) {
      if (c.active && c.busy && c.posted && !c.arrived && now >= c.wall_dispatched + timeout) {
        cohort_->cancel(c.id, fmt::format("no update within update_timeout = {} s", o_.update_timeout()));
        on_failure({c.id, c.name, ErrorKind::kOverloaded, "no update within update_timeout"});
      }
    }
    if (!virtual_) {
      const double t = now_wall();
      while (!wakes_.empty() && *wakes_.begin() <= t) wakes_.erase(wakes_.begin());
      fill(t);
    }
    return true;
  }

  // --- Checkpoints.
  NamedTensors checkpoint_state() const {
    NamedTensors s = global_;
    for (auto& t : server_.state()) s.push_back(std::move(t));
    const std::vector<double> state = {static_cast<double>(version_), now_, static_cast<double>(applied_),
                                       static_cast<double>(refused_), static_cast<double>(lost_), device_s_,
                                       static_cast<double>(dispatches_)};
    s.emplace_back("async/state", at::tensor(state, at::kDouble));
    s.emplace_back("async/staleness_hist", at::tensor(window_.histogram(), at::kDouble));
    return s;
  }

  static std::vector<double> values_of(const at::Tensor& t) {
    const auto v = t.to(at::kDouble).contiguous();
    return {v.data_ptr<double>(), v.data_ptr<double>() + v.numel()};
  }

  void restore(NamedTensors state) {
    NamedTensors model, opt;
    for (auto& [name, t] : state) {
      if (name == "async/state") {
        FEDRA_REQUIRE(t.numel() == 7, "the checkpoint's async/state has {} values, expected 7", t.numel());
        const std::vector<double> p = values_of(t);
        version_ = static_cast<int64_t>(p[0]);
        now_ = p[1];
        applied_ = static_cast<int64_t>(p[2]);
        refused_ = static_cast<int64_t>(p[3]);
        lost_ = static_cast<int64_t>(p[4]);
        device_s_ = p[5];
        dispatches_ = static_cast<int64_t>(p[6]);
      } else if (name == "async/staleness_hist") {
        window_.set_histogram(values_of(t));
      } else if (ServerOptimizer::is_state(name)) {
        opt.emplace_back(name, t);
      } else {
        model.emplace_back(name, t);
      }
    }
    check_layout(global_, model);
    global_ = std::move(model);
    server_.load_state(opt);
  }

  void finished(RunContext& ctx) {
    if (ctx.out_dir.empty()) return;
    load_model_state(*model_, global_);
    save_trained_model(ctx.out_dir, model_);
  }

  Job job_;
  AsyncOptions o_;
  ServerOptimizer server_;
  std::shared_ptr<Fleet> fleet_;
  uint64_t rng_;
  torch::nn::Sequential model_{nullptr};
  NamedTensors global_;
  uint64_t model_bytes_ = 0;

  RunContext* ctx_ = nullptr;
  Cohort* cohort_ = nullptr;
  std::vector<Instruction>* initial_ = nullptr;
  uint32_t total_ = 0;
  bool virtual_ = false;
  bool stopping_ = false;
  Clock::time_point start_;
  double wall_offset_ = 0;
  std::vector<Client> clients_;
  std::map<WorkerId, size_t> index_;
  std::map<std::string, size_t> by_name_;
  std::set<std::tuple<double, std::string, Event>> events_;  // virtual clock: when, whose, what
  std::set<double> wakes_;  // when an offline client comes back (to fill a free slot)

  int64_t version_ = 0;  // server updates so far
  double now_ = 0;       // the simulated clock (virtual), or the wall time of the last update
  int64_t applied_ = 0, refused_ = 0, lost_ = 0, dispatches_ = 0;
  double device_s_ = 0;  // seconds devices spent on updates (compute and transfer), lost ones included
  DeltaBuffer buffer_;  // fedbuff's
  Window window_;  // the updates since the last server update
};

}  // namespace

std::unique_ptr<CoordinatorStrategy> make_coordinator(const Job& job, const AsyncOptions& options) {
  return std::make_unique<AsyncCoordinator>(job, options);
}

}  // namespace fedra::async
