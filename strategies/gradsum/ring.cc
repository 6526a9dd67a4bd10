// gradsum's coordinator half for topology=ring: orchestration only. The replicas all-reduce
// among themselves (core/net/peer.h); the coordinator tells each its rank and its ring, hears
// heartbeats and checksums (control-sized), and at the round's end takes the model and the
// optimiser state from rank 0, after checking every replica ended with the same parameters.
#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "core/data/tensor_checks.h"
#include "core/federated/aggregation.h"
#include "core/loops/cohort.h"
#include "core/net/peer.h"
#include "strategies/gradsum/internal.h"
#include "strategies/gradsum/messages.h"
#include "strategies/run_message.h"

namespace fedra::gradsum {

namespace {

using Clock = std::chrono::steady_clock;

// One attempt at the round: a ring of the workers connected when it began.
class Attempt {
 public:
  Attempt(Cohort& cohort, const GradSumOptions& o, const RingRound& rr, Layout& layout, NamedTensors& buffers)
      : o_(o), rr_(rr), layout_(layout), buffers_(buffers), members_(cohort.workers_by_name()) {
    for (const auto& w : members_) rank_[w.id] = rank_.size();
  }

  std::vector<Instruction> instructions(const ParamOptimizer& optimizer, uint64_t session) const {
    RunIns run;
    run.round = rr_.round;
    run.first = rr_.first;
    run.steps = rr_.count;
    run.world = static_cast<int64_t>(members_.size());
    for (size_t i = 0; i < layout_.params.size(); ++i) run.params.emplace_back(layout_.names[i], layout_.params[i]);
    run.params.insert(run.params.end(), buffers_.begin(), buffers_.end());
    run.opt_state = optimizer.state();
    std::vector<Instruction> out;
    for (size_t k = 0; k < members_.size(); ++k) {
      run.rank = static_cast<int64_t>(k);
      out.push_back({members_[k].id, run.encode(kRun)});
    }
    ask_to_link(out, members_, session, "gradsum topology=ring");
    return out;
  }

  std::vector<Failure> run(Cohort& cohort, std::vector<Instruction> instructions) {
    const auto step_timeout = o_.schedule().step_timeout_ms();
    last_progress_ = Clock::now();
    Exchange ex;
    // The replicas enforce step_timeout on every wait among themselves; this is the backstop for
    // a replica that stops talking to everyone (a heartbeat comes at least every second).
    ex.deadline = [&] { return last_progress_ + step_timeout; };
    ex.on_part = [&](const WorkerInfo& w, Message&& m) { on_part(w, std::move(m)); };
    ex.on_reply = [&](const WorkerInfo& w, Message&& m) { on_done(w, RoundDone::decode(std::move(m), w.name)); };
    // No cancel of the others on a failure: a failed member closes its ring links, so the rest
    // of the ring fails within milliseconds and replies; and a member that died is then known to
    // be gone (its connection closed) when the exchange returns, which decides a re-formed ring.
    ex.on_failure = [&](const Failure& f) {
      if (error_.empty()) error_ = fmt::format("{} failed: {}", f.name, f.message);
    };
    return cohort.exchange(std::move(instructions), ex);
  }

  bool complete(const std::vector<Failure>& failures) const {
    return failures.empty() && done_ == static_cast<int>(members_.size()) && !home_.params.empty();
  }

  // The round's end into the coordinator's model, optimiser and buffers.
  void adopt(ParamOptimizer& optimizer) {
    torch::NoGradGuard no_grad;
    NamedTensors ref;
    for (size_t i = 0; i < layout_.params.size(); ++i) ref.emplace_back(layout_.names[i], layout_.params[i]);
    check_layout(ref, home_.params);
    for (size_t i = 0; i < layout_.params.size(); ++i) layout_.params[i].copy_(home_.params[i].second);
    optimizer.load_state(home_.opt_state);
    if (buffer_sum_.count() > 0) {
      const NamedTensors average = buffer_sum_.take_average();
      for (size_t i = 0; i < buffers_.size(); ++i) buffers_[i].second.copy_(average[i].second);
    }
  }

  Metrics line(const std::vector<Failure>& lost, int attempt_no) const {
    Metrics l = {{"status", std::string("ok")},
                 {"topology", std::string("ring")},
                 {"first_step", rr_.first},
                 {"steps", rr_.count},
                 {"train_loss", first_loss_n_ > 0 ? first_loss_sum_ / first_loss_n_ : std::nan("")},
                 {"train_loss_mean", loss_examples_ > 0 ? loss_sum_ / loss_examples_ : std::nan("")},
                 {"train_examples", static_cast<int64_t>(loss_examples_)},
                 {"workers_asked", static_cast<int64_t>(members_.size())},
                 {"workers_ok", static_cast<int64_t>(done_)},
                 {"workers_failed", static_cast<int64_t>(lost.size())}};
    if (!lost.empty()) l.emplace_back("failures", describe_failures(lost));
    l.insert(l.end(), {{"ring_attempts", static_cast<int64_t>(attempt_no)},
                       {"sync_checks", static_cast<int64_t>(sync_checks_)},
                       {"worker_compute_ms", compute_ms_},
                       {"worker_wait_ms", wait_ms_},
                       {"worker_exchange_ms", exchange_ms_},
                       {"ring_bytes", static_cast<int64_t>(ring_bytes_)}});
    return l;
  }

  // "worker-0 -> worker-1 -> worker-0", for messages.
  std::string ring() const {
    std::string out;
    for (const auto& w : members_) out += w.name + " -> ";
    return out + (members_.empty() ? std::string() : members_.front().name);
  }
  const std::vector<WorkerInfo>& members() const { return members_; }
  const std::string& error() const { return error_; }

 private:
  void on_part(const WorkerInfo& w, Message&& m) {
    last_progress_ = Clock::now();
    if (m.kind == kProgress) return;
    FEDRA_REQUIRE(m.kind == kCheck, "unexpected '{}' from {} during a gradsum ring round", m.kind, w.name);
    const StepCheck check = StepCheck::decode(m, w.name);
    auto [it, first] = checks_.emplace(static_cast<int64_t>(check.step), std::make_pair(w.name, check.checksum));
    if (first) return;
    FEDRA_REQUIRE(it->second.second == check.checksum,
                  "replica {} is out of sync after step {}: its parameter checksum is {}, replica {}'s is {}", w.name,
                  check.step, check.checksum, it->second.first, it->second.second);
    ++sync_checks_;
  }

  void on_done(const WorkerInfo& w, RoundDone d) {
    last_progress_ = Clock::now();
    FEDRA_REQUIRE(!d.checksum.empty(), "{}'s '{}' lacks the option 'checksum'", w.name, kDone);
    if (final_from_.empty()) {
      final_from_ = w.name;
      final_checksum_ = d.checksum;
    } else {
      FEDRA_REQUIRE(d.checksum == final_checksum_,
                    "replica {} ended round {} with parameter checksum {}, replica {} with {}", w.name, rr_.round,
                    d.checksum, final_from_, final_checksum_);
    }
    if (rank_.at(w.id) == 0) {
      FEDRA_REQUIRE(d.params.size() == layout_.params.size(), "rank 0 ({}) brought {} parameters, the model has {}",
                    w.name, d.params.size(), layout_.params.size());
      home_.params = std::move(d.params);
      home_.opt_state = std::move(d.opt_state);
    }
    if (!d.buffers.empty()) {
      try {
        check_layout(buffers_, d.buffers);
        buffer_sum_.add(d.buffers, 1.0);
      } catch (const Error& e) {
        FEDRA_FAIL("worker {}'s buffers at the end of round {}: {}", w.name, rr_.round, e.what());
      }
    }
    compute_ms_ = std::max(compute_ms_, d.compute_ms);
    wait_ms_ = std::max(wait_ms_, d.wait_ms);
    exchange_ms_ = std::max(exchange_ms_, d.exchange_ms);
    loss_sum_ += d.loss_sum;
    loss_examples_ += d.loss_examples;
    if (std::isfinite(d.first_loss)) {
      first_loss_sum_ += d.first_loss;
      first_loss_n_ += 1;
    }
    ring_bytes_ += d.ring_bytes_sent;
    ++done_;
  }

  const GradSumOptions& o_;
  const RingRound& rr_;
  Layout& layout_;
  NamedTensors& buffers_;
  std::vector<WorkerInfo> members_;  // by rank
  std::map<WorkerId, size_t> rank_;
  std::map<int64_t, std::pair<std::string, std::string>> checks_;  // step -> (first replica, checksum)
  std::string final_checksum_, final_from_;
  std::string error_;
  Clock::time_point last_progress_;
  int done_ = 0, sync_checks_ = 0;
  double compute_ms_ = 0, wait_ms_ = 0, exchange_ms_ = 0, loss_sum_ = 0, loss_examples_ = 0;
  double first_loss_sum_ = 0, first_loss_n_ = 0;
  double ring_bytes_ = 0;
  RoundDone home_;  // rank 0's parameters and optimiser state
  WeightedAverage buffer_sum_;
};

}  // namespace

Metrics run_ring_round(Cohort& cohort, const GradSumOptions& o, const RingRound& rr, Layout& layout,
                       ParamOptimizer& optimizer, NamedTensors& buffers, uint64_t& session) {
  std::vector<Failure> lost;  // failures of attempts before the one that completed
  for (int attempt_no = 1;; ++attempt_no) {
    Attempt a(cohort, o, rr, layout, buffers);
    const auto failures = a.run(cohort, a.instructions(optimizer, ++session));
    if (a.complete(failures)) {
      a.adopt(optimizer);
      return a.line(lost, attempt_no);
    }
    // The round failed. The coordinator's model and optimiser are still those of the round's
    // start; with on_failure=continue and a member gone, the ring re-forms without it and the
    // round runs again from its first step.
    const std::string why = failures.empty() ? (a.error().empty() ? "interrupted" : a.error()) : describe_failures(failures);
    std::set<std::string> now;
    for (const auto& w : cohort.workers_by_name()) now.insert(w.name);
    size_t gone = 0;
    for (const auto& w : a.members()) gone += now.count(w.name) == 0 ? 1 : 0;
    const bool again = o.failure().on_failure() == OnFailure::kContinue && gone > 0 &&
                       static_cast<int64_t>(now.size()) >= o.failure().min_workers();
    if (!again) {
      FEDRA_FAIL("gradsum round {} failed (ring {}): {}{}", rr.round, a.ring(), why,
                 o.failure().on_failure() == OnFailure::kFail
                     ? " (set gradsum.on_failure=continue to re-form the ring without a lost worker)"
                     : fmt::format(" ({} worker(s) connected, min_workers is {})", now.size(),
                                   o.failure().min_workers()));
    }
    spdlog::warn("gradsum round {}: the ring {} failed ({}); re-forming it with the {} connected worker(s) and "
                 "running the round again from step {}",
                 rr.round, a.ring(), why, now.size(), rr.first);
    lost.insert(lost.end(), failures.begin(), failures.end());
  }
}

}  // namespace fedra::gradsum
