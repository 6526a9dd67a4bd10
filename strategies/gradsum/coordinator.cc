// gradsum's coordinator half: the bucketed sum of every replica's gradient, one optimiser.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <optional>

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "core/data/tensor_checks.h"
#include "core/federated/aggregation.h"
#include "core/loops/cohort.h"
#include "core/loops/stepped_strategy.h"
#include "core/model/model.h"
#include "core/model/script_model.h"
#include "core/net/peer.h"
#include "core/training/optimizer.h"
#include "core/training/training.h"
#include "strategies/gradsum/internal.h"
#include "strategies/gradsum/messages.h"
#include "strategies/run_message.h"

namespace fedra::gradsum {

namespace {


class GradSumCoordinator : public SteppedStrategy {
 public:
  GradSumCoordinator(const Job& job, GradSumOptions options)
      : SteppedStrategy(job, "gradsum", options.eval()), o_(std::move(options)) {}

 protected:

  void prepare(const RunContext& ctx) override {
    model_ = initial_model(ctx, o_.init());
    buffers_.clear();
    for (const auto& b : model_->named_buffers()) buffers_.emplace_back(b.key(), b.value());
    layout_ = layout_of(*model_, static_cast<uint64_t>(o_.bucket_kb()) << 10);
    optimizer_.emplace(OptimizerConfig::from(o_.optim()), layout_.names, layout_.params);
    for (const auto& bucket : layout_.buckets) {
      NamedTensors ref;
      for (const Piece& p : bucket) ref.emplace_back(layout_.piece_name(p), layout_.slice(p));
      bucket_refs_.push_back(std::move(ref));
    }
  }
  size_t workers_needed() const override { return static_cast<size_t>(o_.failure().min_workers()); }
  StepPlan plan_steps(const std::vector<WorkerInfo>& workers) const override {
    int64_t max_examples = 0;
    for (const auto& w : workers) max_examples = std::max(max_examples, w.num_examples);
    return StepPlan::from(o_.schedule(), max_examples);
  }
  std::string describe(const StepPlan& p) const override {
    return fmt::format("gradsum: {} steps in {} rounds of up to {}; {} bucket(s) of <= {} KiB; topology={}, {}reduce={}",
                       p.total, p.rounds(), p.per_round, layout_.buckets.size(), o_.bucket_kb(),
                       enum_name(o_.topology()),
                       o_.topology() != Topology::kRing ? fmt::format("sync={} (star), ", enum_name(o_.sync())) : "",
                       enum_name(o_.reduce()));
  }
  Metrics run_round(Cohort& cohort, const RunContext&, const RoundSteps& s) override {
    return run_round(cohort, s.round, s.first, s.count);
  }
  torch::nn::Sequential model() const override { return model_; }
  // Replicas hold nothing between rounds (each round's run request brings the parameters, and
  // the optimiser state for sync=gradient): the coordinator's model and optimiser are the state.
  NamedTensors state() const override { return model_and_optimizer_state(*model_, *optimizer_); }
  void restore(const NamedTensors& state) override {
    restore_model_and_optimizer(state, *model_, *optimizer_, "gradsum");
  }

 private:
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

  // topology=auto: the ring when every worker can take part in one (real worker processes with
  // a peer port; not the in-process LocalCohort, not a TLS worker without its own certificate).
  bool use_ring(Cohort& cohort) const {
    if (o_.topology() != Topology::kAuto) return o_.topology() == Topology::kRing;
    return can_link(cohort.workers_by_name());
  }

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
    if (use_ring(cohort)) {
      return run_ring_round(cohort, o_, RingRound{round, first, count}, layout_, *optimizer_, buffers_, session_);
    }
    RoundState r;
    for (const auto& w : cohort.workers_by_name()) {
      r.rank[w.id] = r.ids.size();
      r.ids.push_back(w.id);
    }
    r.active.assign(r.ids.size(), true);
    r.active_count = r.ids.size();
    r.step = first;
    r.end = first + count;
    reset_step(r);

    RunIns run;
    run.round = round;
    run.first = first;
    run.steps = count;
    run.world = static_cast<int64_t>(r.ids.size());
    for (size_t i = 0; i < layout_.params.size(); ++i) run.params.emplace_back(layout_.names[i], layout_.params[i]);
    // Buffers (batch norm's running statistics) go down with the parameters and come back in
    // each replica's done; the coordinator's model takes their average (below).
    run.params.insert(run.params.end(), buffers_.begin(), buffers_.end());
    WeightedAverage buffers;
    if (o_.sync() == Sync::kGradient) run.opt_state = optimizer_->state();
    std::vector<Instruction> instructions;
    for (size_t k = 0; k < r.ids.size(); ++k) {
      run.rank = static_cast<int64_t>(k);
      instructions.push_back({r.ids[k], run.encode(kRun)});
    }

    const auto step_timeout = std::chrono::milliseconds(static_cast<int64_t>(o_.schedule().step_timeout() * 1000));
    r.last_progress = Clock::now();
    Exchange ex;
    ex.deadline = [&] { return r.last_progress + step_timeout; };
    ex.on_part = [&](const WorkerInfo& w, Message&& m) { on_part(cohort, r, w, std::move(m)); };
    ex.on_reply = [&](const WorkerInfo& w, Message&& m) {
      const RoundDone done = RoundDone::decode(std::move(m), w.name);
      if (!done.buffers.empty()) {
        try {
          check_layout(buffers_, done.buffers);
          buffers.add(done.buffers, 1.0);
        } catch (const Error& e) {
          FEDRA_FAIL("worker {}'s buffers at the end of round {}: {}", w.name, round, e.what());
        }
      }
      r.worker_compute_ms = std::max(r.worker_compute_ms, done.compute_ms);
      r.worker_wait_ms = std::max(r.worker_wait_ms, done.wait_ms);
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
    if (buffers.count() > 0) {
      torch::NoGradGuard no_grad;
      const NamedTensors average = buffers.take_average();  // in buffers_' order: every layout was checked
      for (size_t i = 0; i < buffers_.size(); ++i) buffers_[i].second.copy_(average[i].second);
    }

    if (!r.abort_reason.empty()) {
      FEDRA_FAIL("gradsum round {} failed at step {}: {}{}", round, r.step, r.abort_reason,
                 o_.failure().on_failure() == OnFailure::kFail ? " (set gradsum.on_failure=continue to go on without "
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
      const StepCheck check = StepCheck::decode(m, w.name);
      const auto it = r.expected.find(static_cast<int64_t>(check.step));
      FEDRA_REQUIRE(it != r.expected.end(), "{} sent a checksum for step {}, which is not a check step",
                    w.name, check.step);
      const std::string want = std::to_string(it->second);
      FEDRA_REQUIRE(check.checksum == want,
                    "replica {} is out of sync after step {}: its parameter checksum is {}, the "
                    "coordinator's is {} (a replica applied a different update)",
                    w.name, check.step, check.checksum, want);
      ++r.checks;
      return;
    }
    FEDRA_REQUIRE(m.kind == kGrad, "unexpected '{}' from {} during a gradsum round", m.kind, w.name);
    FEDRA_REQUIRE(static_cast<int64_t>(m.step) == r.step, "{} sent a gradient for step {} during step {}",
                  w.name, m.step, r.step);
    Bucket grad = Bucket::decode(std::move(m), kGrad, layout_.buckets.size(), w.name);
    const size_t b = grad.bucket;
    FEDRA_REQUIRE(!r.got[b][rank], "{} sent bucket {} of step {} twice", w.name, b, r.step);
    try {
      check_layout(bucket_refs_[b], grad.pieces);
      check_finite(grad.pieces);
    } catch (const Error& e) {
      FEDRA_FAIL("rejected gradient from {} (step {}, bucket {}): {}", w.name, r.step, b, e.what());
    }
    if (grad.loss && grad.loss->second > 0) {
      r.step_loss += grad.loss->first * grad.loss->second;
      r.step_examples += grad.loss->second;
    }
    auto& acc = r.acc[b];
    if (r.contributors[b] == 0) {
      // The first copy to arrive becomes the sum, in its own receive buffer: no copy.
      for (auto& [name, t] : grad.pieces) acc.push_back(t);
    } else {
      for (size_t j = 0; j < acc.size(); ++j) acc[j].add_(grad.pieces[j].second);
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
    if (o_.reduce() == Reduce::kMean && r.contributors[b] > 1) {
      for (auto& t : acc) t.div_(static_cast<double>(r.contributors[b]));
    }
    const auto& bucket = layout_.buckets[b];
    if (r.buckets_done == 0) optimizer_->begin_step();
    Bucket up;
    up.step = static_cast<uint64_t>(r.step);
    up.bucket = b;
    const bool send_params = o_.sync() == Sync::kParams;
    if (send_params) {
      for (size_t j = 0; j < bucket.size(); ++j) optimizer_->update(bucket[j].param, bucket[j].offset, acc[j]);
    }
    for (size_t j = 0; j < bucket.size(); ++j) {
      up.pieces.emplace_back(bucket_refs_[b][j].first, send_params ? layout_.slice(bucket[j]) : acc[j]);
    }
    const Message update = up.encode(kUpdate);
    for (size_t k = 0; k < r.ids.size(); ++k) {
      if (r.active[k]) cohort.post(r.ids[k], update);
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
    const bool stop = o_.failure().on_failure() == OnFailure::kFail ||
                      static_cast<int64_t>(r.active_count) < o_.failure().min_workers();
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
                                 o_.failure().on_failure() == OnFailure::kContinue
                                     ? fmt::format(" ({} worker(s) left, min_workers is {})",
                                                   r.active_count, o_.failure().min_workers())
                                     : std::string());
    for (size_t k = 0; k < r.ids.size(); ++k) {
      if (r.active[k]) cohort.cancel(r.ids[k], "step failed: " + r.abort_reason);
    }
  }

  GradSumOptions o_;
  torch::nn::Sequential model_{nullptr};
  NamedTensors buffers_;  // the model's buffers (its own tensors): sent, checked against, averaged into
  Layout layout_;
  std::optional<ParamOptimizer> optimizer_;
  std::vector<NamedTensors> bucket_refs_;
  uint64_t session_ = first_peer_session();  // topology=ring: the newest ring asked for
};

}  // namespace

std::unique_ptr<CoordinatorStrategy> new_coordinator(const Job& job, const GradSumOptions& options) {
  return std::make_unique<GradSumCoordinator>(job, options);
}

}  // namespace fedra::gradsum
