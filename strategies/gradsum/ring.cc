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
#include "strategies/run_message.h"

namespace fedra::gradsum {

namespace {

using Clock = std::chrono::steady_clock;

struct Attempt {
  std::vector<WorkerInfo> members;  // by rank
  std::map<WorkerId, size_t> rank;
  std::map<int64_t, std::pair<std::string, std::string>> checks;  // step -> (first replica, checksum)
  std::string final_checksum, final_from;
  std::string error;
  Clock::time_point last_progress;
  int done = 0, sync_checks = 0;
  double compute_ms = 0, wait_ms = 0, exchange_ms = 0, loss_sum = 0, loss_examples = 0;
  double first_loss_sum = 0, first_loss_n = 0;
  double ring_bytes = 0;
};

}  // namespace

Metrics run_ring_round(Cohort& cohort, const GradSumOptions& o, const RingRound& rr, Layout& layout,
                       ParamOptimizer& optimizer, NamedTensors& buffers, uint64_t& session) {
  std::vector<Failure> lost;  // failures of attempts before the one that completed
  for (int attempt_no = 1;; ++attempt_no) {
    Attempt a;
    a.members = cohort.workers_by_name();
    for (const auto& w : a.members) a.rank[w.id] = a.rank.size();
    RunIns run;
    run.round = rr.round;
    run.first = rr.first;
    run.steps = rr.count;
    run.world = static_cast<int64_t>(a.members.size());
    for (size_t i = 0; i < layout.params.size(); ++i) run.params.emplace_back(layout.names[i], layout.params[i]);
    run.params.insert(run.params.end(), buffers.begin(), buffers.end());
    run.opt_state = optimizer.state();
    ++session;
    std::vector<Instruction> instructions;
    for (size_t k = 0; k < a.members.size(); ++k) {
      run.rank = static_cast<int64_t>(k);
      instructions.push_back({a.members[k].id, run.encode(kRun)});
    }
    ask_to_link(instructions, a.members, session, "gradsum topology=ring");

    WeightedAverage buffer_sum;
    NamedTensors home;  // rank 0's parameters ("param/") and optimiser state ("opt/")
    const auto step_timeout = o.schedule().step_timeout_ms();
    a.last_progress = Clock::now();
    Exchange ex;
    // The replicas enforce step_timeout on every wait among themselves; this is the backstop for
    // a replica that stops talking to everyone (a heartbeat comes at least every second).
    ex.deadline = [&] { return a.last_progress + step_timeout; };
    ex.on_part = [&](const WorkerInfo& w, Message&& m) {
      a.last_progress = Clock::now();
      if (m.kind == kProgress) return;
      FEDRA_REQUIRE(m.kind == kCheck, "unexpected '{}' from {} during a gradsum ring round", m.kind, w.name);
      const std::string& sum = m.option("checksum");
      auto [it, first] = a.checks.emplace(static_cast<int64_t>(m.step), std::make_pair(w.name, sum));
      if (!first) {
        FEDRA_REQUIRE(it->second.second == sum,
                      "replica {} is out of sync after step {}: its parameter checksum is {}, replica {}'s is {}",
                      w.name, m.step, sum, it->second.first, it->second.second);
        ++a.sync_checks;
      }
    };
    ex.on_reply = [&](const WorkerInfo& w, Message&& m) {
      m.expect_kind(kDone, w.name);
      a.last_progress = Clock::now();
      const std::string& sum = m.option("checksum");
      if (a.final_from.empty()) {
        a.final_from = w.name;
        a.final_checksum = sum;
      } else {
        FEDRA_REQUIRE(sum == a.final_checksum,
                      "replica {} ended round {} with parameter checksum {}, replica {} with {}", w.name, rr.round,
                      sum, a.final_from, a.final_checksum);
      }
      NamedTensors params = take_prefixed(m.tensors, "param/");
      NamedTensors opt = take_prefixed(m.tensors, "opt/");
      if (a.rank.at(w.id) == 0) {
        FEDRA_REQUIRE(params.size() == layout.params.size(), "rank 0 ({}) brought {} parameters, the model has {}",
                      w.name, params.size(), layout.params.size());
        home = std::move(params);
        append_prefixed(home, "opt/", opt);
      }
      if (!m.tensors.empty()) {
        try {
          check_layout(buffers, m.tensors);
          buffer_sum.add(m.tensors, 1.0);
        } catch (const Error& e) {
          FEDRA_FAIL("worker {}'s buffers at the end of round {}: {}", w.name, rr.round, e.what());
        }
      }
      a.compute_ms = std::max(a.compute_ms, m.metric_or("compute_ms", 0));
      a.wait_ms = std::max(a.wait_ms, m.metric_or("wait_ms", 0));
      a.exchange_ms = std::max(a.exchange_ms, m.metric_or("exchange_ms", 0));
      a.loss_sum += m.metric_or("loss_sum", 0);
      a.loss_examples += m.metric_or("loss_examples", 0);
      const double fl = m.metric_or("first_loss", std::nan(""));
      if (std::isfinite(fl)) {
        a.first_loss_sum += fl;
        a.first_loss_n += 1;
      }
      a.ring_bytes += m.metric_or("ring_bytes_sent", 0);
      ++a.done;
    };
    // No cancel of the others on a failure: a failed member closes its ring links, so the rest
    // of the ring fails within milliseconds and replies; and a member that died is then known to
    // be gone (its connection closed) when the exchange returns, which decides a re-formed ring.
    ex.on_failure = [&](const Failure& f) {
      if (a.error.empty()) a.error = fmt::format("{} failed: {}", f.name, f.message);
    };
    const auto failures = cohort.exchange(std::move(instructions), ex);
    if (failures.empty() && a.done == static_cast<int>(a.members.size()) && !home.empty()) {
      torch::NoGradGuard no_grad;
      NamedTensors opt = take_prefixed(home, "opt/");
      check_layout([&] {
        NamedTensors ref;
        for (size_t i = 0; i < layout.params.size(); ++i) ref.emplace_back(layout.names[i], layout.params[i]);
        return ref;
      }(), home);
      for (size_t i = 0; i < layout.params.size(); ++i) layout.params[i].copy_(home[i].second);
      optimizer.load_state(opt);
      if (buffer_sum.count() > 0) {
        const NamedTensors average = buffer_sum.take_average();
        for (size_t i = 0; i < buffers.size(); ++i) buffers[i].second.copy_(average[i].second);
      }
      Metrics line;
      line.emplace_back("status", std::string("ok"));
      line.emplace_back("topology", std::string("ring"));
      line.emplace_back("first_step", rr.first);
      line.emplace_back("steps", rr.count);
      line.emplace_back("train_loss", a.first_loss_n > 0 ? a.first_loss_sum / a.first_loss_n : std::nan(""));
      line.emplace_back("train_loss_mean", a.loss_examples > 0 ? a.loss_sum / a.loss_examples : std::nan(""));
      line.emplace_back("train_examples", static_cast<int64_t>(a.loss_examples));
      line.emplace_back("workers_asked", static_cast<int64_t>(a.members.size()));
      line.emplace_back("workers_ok", static_cast<int64_t>(a.done));
      line.emplace_back("workers_failed", static_cast<int64_t>(lost.size()));
      if (!lost.empty()) line.emplace_back("failures", describe_failures(lost));
      line.emplace_back("ring_attempts", static_cast<int64_t>(attempt_no));
      line.emplace_back("sync_checks", static_cast<int64_t>(a.sync_checks));
      line.emplace_back("worker_compute_ms", a.compute_ms);
      line.emplace_back("worker_wait_ms", a.wait_ms);
      line.emplace_back("worker_exchange_ms", a.exchange_ms);
      line.emplace_back("ring_bytes", static_cast<int64_t>(a.ring_bytes));
      return line;
    }
    // The round failed. The coordinator's model and optimiser are still those of the round's
    // start; with on_failure=continue and a member gone, the ring re-forms without it and the
    // round runs again from its first step.
    std::string ring_desc;
    for (const auto& w : a.members) ring_desc += w.name + " -> ";
    ring_desc += a.members.empty() ? std::string() : a.members.front().name;
    const std::string why = failures.empty() ? (a.error.empty() ? "interrupted" : a.error) : describe_failures(failures);
    std::set<std::string> now;
    for (const auto& w : cohort.workers_by_name()) now.insert(w.name);
    size_t gone = 0;
    for (const auto& w : a.members) gone += now.count(w.name) == 0 ? 1 : 0;
    const bool again = o.failure().on_failure() == OnFailure::kContinue && gone > 0 &&
                       static_cast<int64_t>(now.size()) >= o.failure().min_workers();
    if (!again) {
      FEDRA_FAIL("gradsum round {} failed (ring {}): {}{}", rr.round, ring_desc, why,
                 o.failure().on_failure() == OnFailure::kFail
                     ? " (set gradsum.on_failure=continue to re-form the ring without a lost worker)"
                     : fmt::format(" ({} worker(s) connected, min_workers is {})", now.size(),
                                   o.failure().min_workers()));
    }
    spdlog::warn("gradsum round {}: the ring {} failed ({}); re-forming it with the {} connected worker(s) and "
                 "running the round again from step {}",
                 rr.round, ring_desc, why, now.size(), rr.first);
    lost.insert(lost.end(), failures.begin(), failures.end());
  }
}

}  // namespace fedra::gradsum
