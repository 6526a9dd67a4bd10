#include "core/stepped_strategy.h"

#include <algorithm>

#include <spdlog/spdlog.h>

#include "core/batching.h"
#include "core/model.h"
#include "core/training.h"

namespace fedra {

torch::nn::Sequential SteppedStrategy::initial_model(const RunContext& ctx, const InitOptions& init) const {
  return build_initial_model(job_.model, job_.seed, enum_name(init.init()), init.init_skip(), ctx.dataset);
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
    save_model_file(ctx.out_dir + "/model.bin", model_state(*model()));
    FEDRA_THROW(e.kind(), "{}; model.bin holds the model after round {}", e.what(), completed_);
  }
}

void SteppedStrategy::train(Cohort& cohort, RunContext& ctx) {
  prepare(ctx);
  require_workers(cohort, ctx, workers_needed(), 0);
  const auto workers = cohort.workers_by_name();
  start(cohort, workers);
  const StepPlan plan = plan_steps(workers);
  const auto rounds = static_cast<uint32_t>(plan.rounds());
  spdlog::info("{}", describe(plan));

  int64_t step = 0;
  for (uint32_t round = 1; step < plan.total; ++round) {
    if (ctx.stop_requested()) FEDRA_FAIL("interrupted");
    require_workers(cohort, ctx, workers_needed(), round);
    const int64_t count = std::min(plan.per_round, plan.total - step);
    const auto t0 = Clock::now();
    Metrics line = run_round(cohort, ctx, {round, step, count});
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
      line.emplace_back("test_accuracy", s.accuracy);
      line.emplace_back("test_loss", s.loss);
      line.emplace_back("eval_s", Seconds(Clock::now() - e0).count());
    }
    ctx.report_round(round, rounds, std::move(line));
    completed_ = round;
  }
  if (!ctx.out_dir.empty()) save_model_file(ctx.out_dir + "/model.bin", model_state(*model()));
}

}  // namespace fedra
