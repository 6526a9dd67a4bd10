#include "core/loops/stepped_strategy.h"

#include <algorithm>
#include <chrono>
#include <string>
#include <vector>

#include <fmt/ranges.h>

#include <spdlog/spdlog.h>

#include "core/data/batching.h"
#include "core/model/export.h"
#include "core/model/model.h"
#include "core/model/script_model.h"
#include "core/training/training.h"

namespace fedra {

torch::nn::Sequential SteppedStrategy::initial_model(const RunContext& ctx, const InitOptions& init) const {
  return build_initial_model(job_.model, job_.seed, enum_name(init.init()), init.init_skip(), ctx.dataset);
}

NamedTensors model_and_optimizer_state(const torch::nn::Module& model, const ParamOptimizer& optimizer) {
  NamedTensors s;
  for (const auto& [name, t] : model_state(model)) s.emplace_back("model/" + name, t.clone());
  for (auto& [name, t] : optimizer.state()) s.emplace_back("opt/" + name, std::move(t));
  return s;
}

void restore_model_and_optimizer(const NamedTensors& state, torch::nn::Module& model, ParamOptimizer& optimizer,
                                 const std::string& strategy) {
  NamedTensors weights, opt;
  for (const auto& [name, t] : state) {
    if (name.rfind("model/", 0) == 0) {
      weights.emplace_back(name.substr(6), t);
    } else if (name.rfind("opt/", 0) == 0) {
      opt.emplace_back(name.substr(4), t);
    } else {
      FEDRA_FAIL("the checkpoint holds '{}', which {} does not keep", name, strategy);
    }
  }
  load_model_state(model, weights);
  optimizer.load_state(opt);
}

StepPlan StepPlan::from(const ScheduleOptions& s, int64_t examples_per_epoch) {
  StepPlan p;
  p.per_epoch = std::max<int64_t>(1, steps_per_epoch(examples_per_epoch, s.batch_size()));
  p.total = s.steps() > 0 ? s.steps() : s.epochs() * p.per_epoch;
  p.per_round = s.steps_per_round() > 0 ? s.steps_per_round() : p.per_epoch;
  return p;
}

SteppedStrategy::SteppedStrategy(Job job, std::string name, EvalOptions eval)
    : job_(std::move(job)), name_(std::move(name)), eval_(eval) {
  check_loss_name(job_.loss);
}

void SteppedStrategy::require_workers(Cohort& cohort, const RunContext& ctx, size_t n, uint32_t round) const {
  const auto wait = ctx.wait_timeout;
  if (cohort.wait_for_workers(n, Clock::now() + wait)) return;
  if (round == 0) {
    FEDRA_THROW(ErrorKind::kOverloaded, "{} needs {} worker(s); {} connected within {} s", name_, n, cohort.size(),
                wait.count() / 1000.0);
  }
  FEDRA_THROW(ErrorKind::kOverloaded, "round {}: only {} of {} workers connected within {} s", round, cohort.size(),
              n, wait.count() / 1000.0);
}

void SteppedStrategy::run(Cohort& cohort, RunContext& ctx) {
  try {
    train(cohort, ctx);
  } catch (const Error& e) {
    if (!save_on_failure() || completed_ == 0 || ctx.out_dir.empty()) throw;
    save_trained_model(ctx.out_dir, model());
    FEDRA_THROW(e.kind(), "{}; model.bin holds the model after round {}", e.what(), completed_);
  }
}

namespace {

constexpr const char* kLoopStep = "loop/step";  // the loop's own entries in a checkpoint

std::vector<std::string> worker_names(const Cohort& cohort) {
  std::vector<std::string> names;
  for (const auto& w : cohort.workers_by_name()) names.push_back(w.name);
  return names;
}

// Before a retry: waits up to ctx.wait_timeout for every worker of the failed attempt to be
// connected again (a restarted worker rejoins under its name), so the retry runs with the same
// workers and gives the same result; then the retry goes on with whoever is there.
void wait_for_return(Cohort& cohort, const RunContext& ctx, const std::vector<std::string>& names) {
  const auto deadline = Clock::now() + ctx.wait_timeout;
  for (;;) {
    std::vector<std::string> missing;
    const auto now = worker_names(cohort);
    for (const auto& n : names) {
      if (!std::binary_search(now.begin(), now.end(), n)) missing.push_back(n);
    }
    if (missing.empty()) return;
    if (Clock::now() >= deadline || ctx.stop_requested()) {
      spdlog::warn("{} did not come back within {} s; the round runs again without {}", fmt::join(missing, ", "),
                   ctx.wait_timeout.count() / 1000.0, missing.size() == 1 ? "it" : "them");
      return;
    }
    cohort.wait_for_workers(now.size() + 1, std::min(deadline, Clock::now() + std::chrono::milliseconds(200)));
  }
}

}  // namespace

void SteppedStrategy::train(Cohort& cohort, RunContext& ctx) {
  prepare(ctx);
  require_workers(cohort, ctx, workers_needed(), 0);
  const auto workers = cohort.workers_by_name();
  start(cohort, workers);
  const StepPlan plan = plan_steps(workers);
  const auto rounds = static_cast<uint32_t>(plan.rounds());
  spdlog::info("{}", describe(plan));

  int64_t step = 0;
  uint32_t round = 1;
  if (ctx.resume_round > 0) {
    FEDRA_REQUIRE(ctx.resume_round <= rounds, "the checkpoint is of round {}, but the job has {} rounds",
                  ctx.resume_round, rounds);
    NamedTensors own;
    for (auto& [name, t] : ctx.resume_state) {
      if (name == kLoopStep) {
        step = t.item<int64_t>();
      } else {
        own.emplace_back(std::move(name), std::move(t));
      }
    }
    const int64_t want = std::min(plan.total, static_cast<int64_t>(ctx.resume_round) * plan.per_round);
    FEDRA_REQUIRE(step == want, "the checkpoint is of step {} after round {}, but this plan has step {} there "
                  "(were the schedule options or the workers' data changed?)", step, ctx.resume_round, want);
    restore(own);
    round = ctx.resume_round + 1;
    completed_ = ctx.resume_round;
    spdlog::info("resuming after round {} of {} (step {} of {})", ctx.resume_round, rounds, step, plan.total);
  }
  for (; step < plan.total; ++round) {
    if (ctx.stop_requested()) FEDRA_FAIL("interrupted");
    require_workers(cohort, ctx, workers_needed(), round);
    const int64_t count = std::min(plan.per_round, plan.total - step);
    auto t0 = Clock::now();
    NamedTensors at_start;
    std::vector<std::string> names;  // who took part in the attempt
    if (ctx.round_retries > 0) {
      at_start = state();
      names = worker_names(cohort);
    }
    Metrics line;
    for (int attempt = 0;; ++attempt) {
      try {
        line = run_round(cohort, ctx, {round, step, count});
        break;
      } catch (const Error& e) {
        if (attempt >= ctx.round_retries || ctx.stop_requested()) {
          if (attempt == 0) throw;
          FEDRA_THROW(e.kind(), "{} (after {} retr{} of round {})", e.what(), attempt, attempt == 1 ? "y" : "ies",
                      round);
        }
        spdlog::warn("round {} failed: {}; rolling it back to step {} and running it again once {} worker(s) are "
                     "connected (retry {} of {})", round, e.what(), step, workers_needed(), attempt + 1,
                     ctx.round_retries);
        restore(at_start);
        at_start = state();  // restore() may keep the tensors it was given: the next retry needs its own copy
        wait_for_return(cohort, ctx, names);
        require_workers(cohort, ctx, workers_needed(), round);
        names = worker_names(cohort);
        t0 = Clock::now();
      }
    }
    const double fit_s = Seconds(Clock::now() - t0).count();
    step += count;
    line.emplace_back("fit_s", fit_s);
    if (plan.fine) {
      line.emplace_back("step_ms", 1000.0 * fit_s / static_cast<double>(count));
      line.emplace_back("epoch", static_cast<double>(step) / static_cast<double>(plan.per_epoch));
    }
    if (ctx.test_set != nullptr && eval_.due(round, step >= plan.total)) {
      const auto e0 = Clock::now();
      auto m = model();
      const EvalStats s = evaluate_model(m, *ctx.test_set, job_.loss);
      for (const auto& [key, value] : eval_metrics(s)) line.emplace_back(key, value);
      line.emplace_back("eval_s", Seconds(Clock::now() - e0).count());
    }
    ctx.report_round(round, rounds, std::move(line));
    completed_ = round;
    if (ctx.checkpoint) {
      ctx.checkpoint(round, rounds, [&] {
        NamedTensors s = state();
        s.emplace_back(kLoopStep, at::tensor({step}, at::kLong).reshape({}));
        return s;
      });
    }
  }
  if (!ctx.out_dir.empty()) save_trained_model(ctx.out_dir, model());
}

}  // namespace fedra
