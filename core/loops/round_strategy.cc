#include "core/loops/round_strategy.h"

#include <map>

#include <spdlog/spdlog.h>

namespace fedra {

namespace {

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

}  // namespace

std::vector<WorkerId> RoundStrategy::select_workers(uint32_t round, Cohort& cohort,
                                                    const RunContext& ctx) {
  const RoundConfig cfg = round_config();
  // A different, reproducible draw each round.
  const uint64_t seed = ctx.job.seed * 0x9E3779B97F4A7C15ULL + round;
  return cohort.sample(cfg.fraction, static_cast<size_t>(cfg.min_workers), seed);
}

std::vector<Failure> RoundStrategy::run_fit(uint32_t round, Cohort& cohort, std::vector<Instruction> instructions,
                                            Deadline deadline, size_t& accepted) {
  return cohort.request_all(std::move(instructions), deadline, [&](const WorkerInfo& w, Message&& result) {
    accumulate_fit(round, w, std::move(result));
    ++accepted;  // only reached when accumulate_fit accepted the result
  });
}

std::vector<Instruction> RoundStrategy::instructions_for(uint32_t round, Cohort& cohort, const RunContext& ctx,
                                                         std::vector<Failure>& unasked) {
  std::map<WorkerId, WorkerInfo> connected;
  for (WorkerInfo& w : cohort.workers()) connected.emplace(w.id, std::move(w));
  std::vector<Instruction> instructions;
  for (WorkerId id : select_workers(round, cohort, ctx)) {
    auto it = connected.find(id);
    if (it == connected.end()) continue;
    // A worker whose instruction cannot be made (a Python configure that raised or asked for what
    // cannot run) is not asked: it fails this round with the reason, and the others go on.
    try {
      instructions.push_back({id, configure_fit(round, it->second)});
    } catch (const Error& e) {
      unasked.push_back({id, it->second.name, e.kind(), e.what()});
    }
  }
  return instructions;
}

void RoundStrategy::run(Cohort& cohort, RunContext& ctx) {
  initialize(ctx);
  const RoundConfig cfg = round_config();
  const auto total = static_cast<uint32_t>(cfg.rounds);
  if (ctx.resume_round > 0) {
    FEDRA_REQUIRE(resumable(), "this strategy keeps no checkpoints, so it cannot resume");
    FEDRA_REQUIRE(ctx.resume_round <= total, "the checkpoint is of round {}, but the job has {} rounds",
                  ctx.resume_round, total);
    restore(std::move(ctx.resume_state));
    spdlog::info("resuming after round {} of {}", ctx.resume_round, total);
  }
  std::string last_failure;  // why the last round run failed, if it did
  int64_t updated = 0;        // rounds run that updated the model
  for (uint32_t round = ctx.resume_round + 1; round <= total; ++round) {
    if (ctx.stop_requested()) FEDRA_FAIL("interrupted before round {}", round);
    const auto needed = static_cast<size_t>(cfg.min_workers);
    if (cohort.size() < needed) {
      spdlog::warn("round {}: {} of {} required workers connected; waiting up to {} s", round,
                   cohort.size(), needed, ctx.wait_timeout.count() / 1000.0);
      if (!cohort.wait_for_workers(needed, Clock::now() + ctx.wait_timeout)) {
        FEDRA_THROW(ErrorKind::kOverloaded,
                    "round {}: only {} workers connected after waiting {} s, {} required "
                    "(start more workers or lower min_workers)",
                    round, cohort.size(), ctx.wait_timeout.count() / 1000.0, needed);
      }
    }

    const auto t0 = Clock::now();
    std::vector<Failure> unasked;
    std::vector<Instruction> instructions = instructions_for(round, cohort, ctx, unasked);
    const size_t asked = instructions.size() + unasked.size();
    size_t accepted = 0;
    std::vector<Failure> failures =
        run_fit(round, cohort, std::move(instructions), Clock::now() + cfg.fit_timeout, accepted);
    failures.insert(failures.begin(), unasked.begin(), unasked.end());
    if (ctx.stop_requested()) FEDRA_FAIL("interrupted during round {}", round);
    for (const auto& f : failures) {
      spdlog::warn("round {}: worker {} failed ({}): {}", round, f.name, error_kind_name(f.kind),
                   f.message);
    }

    Metrics line;
    std::string status = "ok";
    std::string reason;
    try {
      Metrics fit = aggregate_fit(round, failures);
      line.insert(line.end(), fit.begin(), fit.end());
    } catch (const Error& e) {
      status = "failed";
      reason = e.what();
      spdlog::error("round {} failed: {}", round, reason);
    }
    for (auto& m : standing_metrics(round)) line.push_back(std::move(m));
    const double fit_s = seconds_since(t0);

    const bool eval_due = cfg.eval_every > 0 &&
                          (round % static_cast<uint32_t>(cfg.eval_every) == 0 || round == total);
    double eval_s = 0;
    if (eval_due) {
      const auto e0 = Clock::now();
      Metrics ev = evaluate(round, ctx);
      eval_s = seconds_since(e0);
      line.insert(line.end(), ev.begin(), ev.end());
    }
    {
      const auto e0 = Clock::now();
      Metrics fed = evaluate_federated(round, total, cohort, ctx);
      if (!fed.empty()) {
        line.insert(line.end(), fed.begin(), fed.end());
        line.emplace_back("fed_eval_s", seconds_since(e0));
      }
    }
    line.emplace_back("status", status);
    if (!reason.empty()) line.emplace_back("reason", reason);
    line.emplace_back("workers_asked", static_cast<int64_t>(asked));
    line.emplace_back("workers_ok", static_cast<int64_t>(accepted));
    line.emplace_back("workers_failed", static_cast<int64_t>(failures.size()));
    line.emplace_back("fit_s", fit_s);
    line.emplace_back("eval_s", eval_s);
    ctx.report_round(round, total, std::move(line));
    if (resumable() && ctx.checkpoint) ctx.checkpoint(round, total, [&] { return checkpoint_state(); });
    last_failure = reason;
    if (status == "ok") ++updated;
  }
  finished(ctx);
  // A job whose last round failed did not deliver what was asked (its model is older than the
  // job's rounds say): it ends failed, so that a script or scheduler can tell. Earlier failed
  // rounds that later ones made up for are only in the metrics.
  FEDRA_REQUIRE(last_failure.empty(), "the last round ({}) failed, so the model is that of an earlier round "
                "({} of {} rounds run updated it): {}",
                total, updated, total - ctx.resume_round, last_failure);
}

}  // namespace fedra
