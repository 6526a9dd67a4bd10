#include "strategies/gradsum/gradsum.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <map>
#include <optional>

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "core/batching.h"
#include "core/cohort.h"
#include "core/model.h"
#include "core/optimizer.h"
#include "core/tensor_checks.h"
#include "core/training.h"

namespace fedra::gradsum {

namespace {

using Seconds = std::chrono::duration<double>;

struct Injection {
  std::string what = "none";  // none, exit, desync
  int64_t step = -1;
};

Injection parse_injection(const std::string& text) {
  if (text == "none") return {};
  const auto colon = text.find(':');
  const std::string what = text.substr(0, colon);
  FEDRA_REQUIRE((what == "exit" || what == "desync") && colon != std::string::npos,
                "gradsum.inject must be none, exit:STEP or desync:STEP, got '{}'", text);
  char* end = nullptr;
  const std::string num = text.substr(colon + 1);
  const long long step = std::strtoll(num.c_str(), &end, 10);
  FEDRA_REQUIRE(!num.empty() && *end == '\0' && step >= 0, "gradsum.inject: '{}' is not a step", num);
  return {what, step};
}


struct Layout {
  std::vector<std::string> names;
  std::vector<at::Tensor> params;  // the model's parameters, detached (share storage)
  std::vector<std::vector<Piece>> buckets;
  std::vector<std::vector<size_t>> buckets_of;  // per parameter: the buckets holding its pieces

  std::string piece_name(const Piece& p) const { return fmt::format("{}@{}", names[p.param], p.offset); }
  at::Tensor slice(const Piece& p) const { return params[p.param].view({-1}).narrow(0, p.offset, p.count); }
};

Layout layout_of(torch::nn::Module& model, uint64_t bucket_bytes) {
  Layout l;
  for (const auto& p : model.named_parameters()) {
    l.names.push_back(p.key());
    l.params.push_back(p.value().detach());
  }
  FEDRA_REQUIRE(!l.params.empty(), "the model has no parameters to train");
  l.buckets = plan_buckets(l.params, bucket_bytes);
  l.buckets_of.assign(l.params.size(), {});
  for (size_t b = 0; b < l.buckets.size(); ++b) {
    for (const Piece& p : l.buckets[b]) l.buckets_of[p.param].push_back(b);
  }
  return l;
}

// ---------------------------------------------------------------------------------------------
// Coordinator

class GradSumCoordinator : public CoordinatorStrategy {
 public:
  explicit GradSumCoordinator(const Job& job)
      : job_(job), o_(parse_options<GradSumOptions>(job.options)) {
    check_loss_name(job.loss);
  }

  void run(Cohort& cohort, RunContext& ctx) override {
    init_model(ctx);
    const auto wait = ctx.wait_timeout;
    if (!cohort.wait_for_workers(static_cast<size_t>(o_.min_workers()), Clock::now() + wait)) {
      FEDRA_THROW(ErrorKind::kOverloaded, "gradsum needs {} worker(s); {} connected within {} s",
                  o_.min_workers(), cohort.size(), wait.count() / 1000.0);
    }
    int64_t max_examples = 0;
    for (const auto& w : cohort.workers()) max_examples = std::max(max_examples, w.num_examples);
    const int64_t per_epoch = std::max<int64_t>(1, (max_examples + o_.batch_size() - 1) / o_.batch_size());
    total_steps_ = o_.steps() > 0 ? o_.steps() : o_.epochs() * per_epoch;
    const int64_t per_round = o_.steps_per_round() > 0 ? o_.steps_per_round() : per_epoch;
    const int64_t rounds = (total_steps_ + per_round - 1) / per_round;
    spdlog::info("gradsum: {} steps in {} rounds of up to {}; {} bucket(s) of <= {} KiB; sync={}, "
                 "reduce={}", total_steps_, rounds, per_round, layout_.buckets.size(),
                 o_.bucket_kb(), o_.sync(), o_.reduce());

    int64_t step = 0;
    for (uint32_t round = 1; step < total_steps_; ++round) {
      if (ctx.stop_requested()) FEDRA_FAIL("interrupted");
      if (!cohort.wait_for_workers(static_cast<size_t>(o_.min_workers()), Clock::now() + wait)) {
        FEDRA_THROW(ErrorKind::kOverloaded, "round {}: only {} of {} workers connected within {} s",
                    round, cohort.size(), o_.min_workers(), wait.count() / 1000.0);
      }
      const int64_t count = std::min(per_round, total_steps_ - step);
      const auto t0 = Clock::now();
      Metrics line = run_round(cohort, round, step, count);
      const double fit_s = Seconds(Clock::now() - t0).count();
      step += count;
      line.emplace_back("fit_s", fit_s);
      line.emplace_back("step_ms", 1000.0 * fit_s / static_cast<double>(count));
      line.emplace_back("epoch", static_cast<double>(step) / static_cast<double>(per_epoch));
      const bool last = step >= total_steps_;
      if (ctx.test_set != nullptr && o_.eval_every() > 0 &&
          (round % static_cast<uint32_t>(o_.eval_every()) == 0 || last)) {
        const auto e0 = Clock::now();
        const EvalStats s = evaluate_model(model_, *ctx.test_set, job_.loss);
        line.emplace_back("test_accuracy", s.accuracy);
        line.emplace_back("test_loss", s.loss);
        line.emplace_back("eval_s", Seconds(Clock::now() - e0).count());
      }
      ctx.report_round(round, static_cast<uint32_t>(rounds), std::move(line));
    }
    if (!ctx.out_dir.empty()) save_model_file(ctx.out_dir + "/model.bin", model_state(*model_));
  }

 private:
  void init_model(const RunContext& ctx) {
    if (o_.init() == "after-data") {
      seed_like_synthetic(ctx.dataset);
      for (int64_t i = 0; i < o_.init_skip(); ++i) build_model_unseeded(job_.model);
      model_ = build_model_unseeded(job_.model);
    } else {
      model_ = build_model(job_.model, job_.seed);
    }
    layout_ = layout_of(*model_, static_cast<uint64_t>(o_.bucket_kb()) << 10);
    optimizer_.emplace(OptimizerConfig::from(o_), layout_.names, layout_.params);
    for (const auto& bucket : layout_.buckets) {
      NamedTensors ref;
      for (const Piece& p : bucket) ref.emplace_back(layout_.piece_name(p), layout_.slice(p));
      bucket_refs_.push_back(std::move(ref));
    }
  }

  // The state of one round's exchange.
  struct RoundState {
    std::vector<WorkerId> ids;  // by rank
    std::map<WorkerId, size_t> rank;
    std::vector<bool> active;
    size_t active_count = 0;
    int64_t step = 0;  // the step in progress
    int64_t end = 0;
    std::vector<std::vector<at::Tensor>> acc;  // per bucket: the running sum
    std::vector<std::vector<char>> got;        // per bucket, per rank
    std::vector<int> contributors;
    std::vector<char> complete;
    size_t buckets_done = 0;
    double step_loss = 0, step_examples = 0;
    double first_loss = std::nan(""), loss_sum = 0;
    int64_t loss_steps = 0, examples = 0;
    std::map<int64_t, uint64_t> expected;  // step -> the coordinator's checksum after it
    std::string abort_reason;
    bool aborting = false;
    Clock::time_point last_progress;
    double worker_compute_ms = 0, worker_wait_ms = 0;
    int done = 0;
    int checks = 0;
  };

  void reset_step(RoundState& r) const {
    const size_t nb = layout_.buckets.size();
    r.acc.assign(nb, {});
    r.got.assign(nb, std::vector<char>(r.ids.size(), 0));
    r.contributors.assign(nb, 0);
    r.complete.assign(nb, 0);
    r.buckets_done = 0;
    r.step_loss = r.step_examples = 0;
  }

  Metrics run_round(Cohort& cohort, uint32_t round, int64_t first, int64_t count) {
    RoundState r;
    auto workers = cohort.workers();
    std::sort(workers.begin(), workers.end(),
              [](const WorkerInfo& a, const WorkerInfo& b) { return a.name < b.name; });
    for (const auto& w : workers) {
      r.rank[w.id] = r.ids.size();
      r.ids.push_back(w.id);
    }
    r.active.assign(r.ids.size(), true);
    r.active_count = r.ids.size();
    r.step = first;
    r.end = first + count;
    reset_step(r);

    NamedTensors start_state;
    for (size_t i = 0; i < layout_.params.size(); ++i) {
      start_state.emplace_back(layout_.names[i], layout_.params[i]);
    }
    if (o_.sync() == "gradient") {
      for (auto& [name, t] : optimizer_->state()) start_state.emplace_back("opt/" + name, t);
    }
    std::vector<Instruction> instructions;
    for (size_t k = 0; k < r.ids.size(); ++k) {
      Message m(kRun, round);
      m.step = static_cast<uint64_t>(first);
      m.tensors = start_state;
      m.options["steps"] = std::to_string(count);
      m.options["rank"] = std::to_string(k);
      m.options["world"] = std::to_string(r.ids.size());
      instructions.push_back({r.ids[k], std::move(m)});
    }

    const auto step_timeout = std::chrono::milliseconds(static_cast<int64_t>(o_.step_timeout() * 1000));
    r.last_progress = Clock::now();
    Exchange ex;
    ex.deadline = [&] { return r.last_progress + step_timeout; };
    ex.on_part = [&](const WorkerInfo& w, Message&& m) { on_part(cohort, r, w, std::move(m)); };
    ex.on_reply = [&](const WorkerInfo& w, Message&& m) {
      FEDRA_REQUIRE(m.kind == kDone, "expected '{}' from {}, got '{}'", kDone, w.name, m.kind);
      r.worker_compute_ms = std::max(r.worker_compute_ms, m.metric_or("compute_ms", 0));
      r.worker_wait_ms = std::max(r.worker_wait_ms, m.metric_or("wait_ms", 0));
      ++r.done;
      r.last_progress = Clock::now();
    };
    ex.on_failure = [&](const Failure& f) { on_failure(cohort, r, f); };
    // The coordinator's per-bucket work (sum, optimiser step) is elementwise over at most a
    // bucket: one thread does it, and idle OpenMP threads spinning on the workers' cores cost
    // more than they give (2.4 -> 1.9 ms per step for the MLP benchmark on 2 cores).
    const int threads = at::get_num_threads();
    at::set_num_threads(1);
    const auto failures = cohort.exchange(std::move(instructions), ex);
    at::set_num_threads(threads);

    if (!r.abort_reason.empty()) {
      FEDRA_FAIL("gradsum round {} failed at step {}: {}{}", round, r.step, r.abort_reason,
                 o_.on_failure() == "fail" ? " (set gradsum.on_failure=continue to go on without "
                                             "a lost worker)" : "");
    }
    if (r.step != r.end) {
      FEDRA_FAIL("gradsum round {} stopped at step {} of {}: {}", round, r.step, r.end,
                 failures.empty() ? "interrupted" : describe_failures(failures));
    }
    Metrics line;
    line.emplace_back("status", std::string("ok"));
    line.emplace_back("first_step", first);
    line.emplace_back("steps", count);
    line.emplace_back("train_loss", r.first_loss);
    line.emplace_back("train_loss_mean", r.loss_steps > 0 ? r.loss_sum / static_cast<double>(r.loss_steps) : std::nan(""));
    line.emplace_back("train_examples", r.examples);
    line.emplace_back("workers_asked", static_cast<int64_t>(r.ids.size()));
    line.emplace_back("workers_ok", static_cast<int64_t>(r.done));
    line.emplace_back("workers_failed", static_cast<int64_t>(failures.size()));
    if (!failures.empty()) line.emplace_back("failures", describe_failures(failures));
    line.emplace_back("sync_checks", static_cast<int64_t>(r.checks));
    line.emplace_back("worker_compute_ms", r.worker_compute_ms);
    line.emplace_back("worker_wait_ms", r.worker_wait_ms);
    return line;
  }

  void on_part(Cohort& cohort, RoundState& r, const WorkerInfo& w, Message&& m) {
    const size_t rank = r.rank.at(w.id);
    if (!r.active[rank]) return;
    r.last_progress = Clock::now();
    if (m.kind == kCheck) {
      const auto it = r.expected.find(static_cast<int64_t>(m.step));
      FEDRA_REQUIRE(it != r.expected.end(), "{} sent a checksum for step {}, which is not a check step",
                    w.name, m.step);
      const std::string& got = m.option("checksum");
      const std::string want = std::to_string(it->second);
      FEDRA_REQUIRE(got == want,
                    "replica {} is out of sync after step {}: its parameter checksum is {}, the "
                    "coordinator's is {} (a replica applied a different update)",
                    w.name, m.step, got, want);
      ++r.checks;
      return;
    }
    FEDRA_REQUIRE(m.kind == kGrad, "unexpected '{}' from {} during a gradsum round", m.kind, w.name);
    FEDRA_REQUIRE(static_cast<int64_t>(m.step) == r.step, "{} sent a gradient for step {} during step {}",
                  w.name, m.step, r.step);
    const double bucket_value = m.metric("bucket");
    FEDRA_REQUIRE(bucket_value >= 0 && bucket_value < static_cast<double>(layout_.buckets.size()),
                  "{} sent bucket {}, the model has {}", w.name, bucket_value, layout_.buckets.size());
    const auto b = static_cast<size_t>(bucket_value);
    FEDRA_REQUIRE(!r.got[b][rank], "{} sent bucket {} of step {} twice", w.name, b, r.step);
    try {
      check_layout(bucket_refs_[b], m.tensors);
      check_finite(m.tensors);
    } catch (const Error& e) {
      FEDRA_FAIL("rejected gradient from {} (step {}, bucket {}): {}", w.name, r.step, b, e.what());
    }
    if (m.metrics.count("loss") != 0) {
      const double n = m.metric("examples");
      if (n > 0) {
        r.step_loss += m.metric("loss") * n;
        r.step_examples += n;
      }
    }
    auto& acc = r.acc[b];
    if (r.contributors[b] == 0) {
      // The first copy to arrive becomes the sum, in its own receive buffer: no copy.
      for (auto& [name, t] : m.tensors) acc.push_back(t);
    } else {
      for (size_t j = 0; j < acc.size(); ++j) acc[j].add_(m.tensors[j].second);
    }
    r.got[b][rank] = 1;
    ++r.contributors[b];
    maybe_complete(cohort, r, b);
  }

  void maybe_complete(Cohort& cohort, RoundState& r, size_t b) {
    if (r.complete[b] || r.contributors[b] == 0 || r.aborting) return;
    for (size_t k = 0; k < r.ids.size(); ++k) {
      if (r.active[k] && !r.got[b][k]) return;
    }
    auto& acc = r.acc[b];
    if (o_.reduce() == "mean" && r.contributors[b] > 1) {
      for (auto& t : acc) t.div_(static_cast<double>(r.contributors[b]));
    }
    const auto& bucket = layout_.buckets[b];
    if (r.buckets_done == 0) optimizer_->begin_step();
    Message up(kUpdate);
    up.step = static_cast<uint64_t>(r.step);
    up.metrics["bucket"] = static_cast<double>(b);
    const bool send_params = o_.sync() == "params";
    if (send_params) {
      for (size_t j = 0; j < bucket.size(); ++j) optimizer_->update(bucket[j].param, bucket[j].offset, acc[j]);
    }
    for (size_t j = 0; j < bucket.size(); ++j) {
      up.tensors.emplace_back(bucket_refs_[b][j].first, send_params ? layout_.slice(bucket[j]) : acc[j]);
    }
    for (size_t k = 0; k < r.ids.size(); ++k) {
      if (r.active[k]) cohort.post(r.ids[k], up);
    }
    if (!send_params) {  // the replicas step; so does the coordinator's copy, off their path
      for (size_t j = 0; j < bucket.size(); ++j) optimizer_->update(bucket[j].param, bucket[j].offset, acc[j]);
    }
    r.complete[b] = 1;
    if (++r.buckets_done == layout_.buckets.size()) finish_step(r);
  }

  void finish_step(RoundState& r) {
    const double loss = r.step_examples > 0 ? r.step_loss / r.step_examples : std::nan("");
    if (std::isnan(r.first_loss) && r.loss_steps == 0) r.first_loss = loss;
    if (r.step_examples > 0) {
      r.loss_sum += loss;
      ++r.loss_steps;
    }
    r.examples += static_cast<int64_t>(r.step_examples);
    if (o_.check_every() > 0 && (r.step + 1) % o_.check_every() == 0) {
      r.expected[r.step] = checksum(layout_.params);
    }
    ++r.step;
    reset_step(r);
  }

  void on_failure(Cohort& cohort, RoundState& r, const Failure& f) {
    const auto it = r.rank.find(f.worker);
    if (it == r.rank.end() || !r.active[it->second]) return;
    r.active[it->second] = false;
    --r.active_count;
    if (r.aborting) return;
    if (r.step >= r.end) return;  // the round's steps are done; only its final reply was lost
    const bool stop = o_.on_failure() == "fail" ||
                      static_cast<int64_t>(r.active_count) < o_.min_workers();
    if (!stop) {
      spdlog::warn("gradsum step {}: going on without {} ({}); {} worker(s) left", r.step, f.name,
                   f.message, r.active_count);
      for (size_t b = 0; b < layout_.buckets.size() && !r.aborting; ++b) {
        const int64_t step = r.step;
        maybe_complete(cohort, r, b);
        if (r.step != step) break;  // that completed the step: the new one waits for gradients
      }
      return;
    }
    r.aborting = true;
    r.abort_reason = fmt::format("{} failed mid-step: {}{}", f.name, f.message,
                                 o_.on_failure() == "continue"
                                     ? fmt::format(" ({} worker(s) left, min_workers is {})",
                                                   r.active_count, o_.min_workers())
                                     : std::string());
    for (size_t k = 0; k < r.ids.size(); ++k) {
      if (r.active[k]) cohort.cancel(r.ids[k], "step failed: " + r.abort_reason);
    }
  }

  Job job_;
  GradSumOptions o_;
  int64_t total_steps_ = 0;
  torch::nn::Sequential model_{nullptr};
  Layout layout_;
  std::optional<ParamOptimizer> optimizer_;
  std::vector<NamedTensors> bucket_refs_;
};

// ---------------------------------------------------------------------------------------------
// Worker

class GradSumWorker : public WorkerStrategy {
 public:
  explicit GradSumWorker(const Job& job)
      : job_(job), o_(parse_options<GradSumOptions>(job.options)), inject_(parse_injection(o_.inject())) {
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

  Message handle(const Message& request, WorkerContext& ctx) override {
    FEDRA_REQUIRE(request.kind == kRun, "gradsum worker cannot handle '{}'", request.kind);
    FEDRA_REQUIRE(ctx.link != nullptr, "gradsum needs the worker link");
    FEDRA_REQUIRE(ctx.data != nullptr && ctx.data->size() > 0, "worker {} has no training data", ctx.name);
    link_ = ctx.link;
    const OptionMap opts(kRun, request.options);
    rank_ = opts.get_int("rank", 0);
    world_ = opts.get_int("world", 1);
    if (!batches_) batches_.emplace(o_.batches(), o_.batch_size(), job_.seed, ctx.name, rank_);
    const int64_t first = static_cast<int64_t>(request.step);
    const int64_t count = opts.get_int("steps", 0);
    const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(o_.step_timeout() * 1000));

    NamedTensors params, opt_state;
    for (const auto& [name, t] : request.tensors) {
      if (name.rfind("opt/", 0) == 0) opt_state.emplace_back(name.substr(4), t);
      else params.emplace_back(name, t);
    }
    load_model_state(*model_, params);
    if (o_.sync() == "gradient") {
      optimizer_.emplace(OptimizerConfig::from(o_), layout_.names, layout_.params);
      optimizer_->load_state(opt_state);
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
  WorkerLink* link_ = nullptr;
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

void GradSumOptions::validate() const {
  FEDRA_REQUIRE(steps_ >= 0, "gradsum.steps must be >= 0, got {}", steps_);
  FEDRA_REQUIRE(steps_ > 0 || epochs_ >= 1, "gradsum needs steps > 0 or epochs >= 1");
  FEDRA_REQUIRE(steps_per_round_ >= 0, "gradsum.steps_per_round must be >= 0 (0: one round per epoch), got {}",
                steps_per_round_);
  FEDRA_REQUIRE(batch_size_ >= 1, "gradsum.batch_size must be >= 1, got {}", batch_size_);
  OptimizerConfig::from(*this).validate();
  FEDRA_REQUIRE(reduce_ == "sum" || reduce_ == "mean", "gradsum.reduce must be sum or mean, got '{}'", reduce_);
  FEDRA_REQUIRE(sync_ == "params" || sync_ == "gradient", "gradsum.sync must be params or gradient, got '{}'", sync_);
  FEDRA_REQUIRE(bucket_kb_ >= 1, "gradsum.bucket_kb must be >= 1, got {}", bucket_kb_);
  check_batches_mode(batches_, "gradsum.batches");
  FEDRA_REQUIRE(check_every_ >= 0, "gradsum.check_every must be >= 0, got {}", check_every_);
  FEDRA_REQUIRE(on_failure_ == "fail" || on_failure_ == "continue",
                "gradsum.on_failure must be fail or continue, got '{}'", on_failure_);
  FEDRA_REQUIRE(min_workers_ >= 1, "gradsum.min_workers must be >= 1, got {}", min_workers_);
  FEDRA_REQUIRE(step_timeout_ > 0, "gradsum.step_timeout must be > 0 seconds, got {}", step_timeout_);
  FEDRA_REQUIRE(eval_every_ >= 0, "gradsum.eval_every must be >= 0, got {}", eval_every_);
  FEDRA_REQUIRE(init_ == "seed" || init_ == "after-data", "gradsum.init must be seed or after-data, got '{}'", init_);
  FEDRA_REQUIRE(init_skip_ >= 0, "gradsum.init_skip must be >= 0, got {}", init_skip_);
  parse_injection(inject_);
}

std::vector<std::vector<Piece>> plan_buckets(const std::vector<at::Tensor>& params, uint64_t bucket_bytes) {
  std::vector<std::vector<Piece>> buckets;
  std::vector<Piece> current;
  uint64_t bytes = 0;
  for (size_t k = params.size(); k-- > 0;) {
    const auto esize = static_cast<uint64_t>(params[k].element_size());
    const int64_t numel = params[k].numel();
    // Pieces hold whole 64-byte lines, so each starts 8-byte aligned and travels zero-copy.
    const int64_t line = static_cast<int64_t>(std::max<uint64_t>(1, 64 / esize));
    const int64_t max_piece = std::max<int64_t>(line, static_cast<int64_t>(bucket_bytes / esize) / line * line);
    for (int64_t offset = 0; offset < numel || (numel == 0 && offset == 0);) {
      const int64_t count = std::min(max_piece, numel - offset);
      current.push_back({k, offset, count});
      bytes += static_cast<uint64_t>(count) * esize;
      offset += std::max<int64_t>(count, 1);
      if (bytes >= bucket_bytes) {
        buckets.push_back(std::move(current));
        current.clear();
        bytes = 0;
      }
    }
  }
  if (!current.empty()) buckets.push_back(std::move(current));
  return buckets;
}

StrategyInfo gradsum_strategy() {
  StrategyInfo info;
  info.name = "gradsum";
  info.description = "Gradient-summing replicas: every step, workers' gradients summed, one optimiser";
  info.options = option_specs<GradSumOptions>();
  info.make_coordinator = [](const Job& job) { return std::make_unique<GradSumCoordinator>(job); };
  info.make_worker = [](const Job& job) { return std::make_unique<GradSumWorker>(job); };
  return info;
}

}  // namespace fedra::gradsum
