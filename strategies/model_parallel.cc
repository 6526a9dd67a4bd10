#include "strategies/model_parallel.h"

#include <algorithm>
#include <map>
#include <optional>

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "core/batching.h"
#include "core/model.h"
#include "core/training.h"
#include "strategies/losses.h"

namespace fedra {

namespace {
using Seconds = std::chrono::duration<double>;
}  // namespace

ModelParallelCoordinator::ModelParallelCoordinator(Job job, RoundPlan plan)
    : job_(std::move(job)), plan_(std::move(plan)) {
  check_loss_name(job_.loss);
}

void ModelParallelCoordinator::run(Cohort& cohort, RunContext& ctx) {
  try {
    train(cohort, ctx);
  } catch (const Error& e) {
    if (completed_ == 0 || ctx.out_dir.empty()) throw;
    save_model_file(ctx.out_dir + "/model.bin", model_state(*model_));
    FEDRA_THROW(e.kind(), "{}; model.bin holds the model after round {}", e.what(), completed_);
  }
}

std::vector<WorkerInfo> ModelParallelCoordinator::pick(const Cohort& cohort) const {
  auto workers = cohort.workers();
  std::sort(workers.begin(), workers.end(), [](const WorkerInfo& a, const WorkerInfo& b) { return a.name < b.name; });
  workers.resize(std::min(plan_.parts, workers.size()));
  return workers;
}

void ModelParallelCoordinator::train(Cohort& cohort, RunContext& ctx) {
  prepare(ctx);
  const size_t n = plan_.parts;
  const auto wait = ctx.wait_timeout;
  if (!cohort.wait_for_workers(n, Clock::now() + wait)) {
    FEDRA_THROW(ErrorKind::kOverloaded, "{} needs {} workers; {} connected within {} s", plan_.strategy, n,
                cohort.size(), wait.count() / 1000.0);
  }
  const int64_t per_epoch = std::max<int64_t>(1, steps_per_epoch(pick(cohort)[0].num_examples, plan_.batch_size));
  const int64_t total = plan_.steps > 0 ? plan_.steps : plan_.epochs * per_epoch;
  const int64_t per_round = plan_.steps_per_round > 0 ? plan_.steps_per_round : per_epoch;
  const int64_t rounds = (total + per_round - 1) / per_round;
  spdlog::info("{}", describe(total, rounds, per_round));
  opt_state_.assign(n, {});

  int64_t step = 0;
  for (uint32_t round = 1; step < total; ++round) {
    if (ctx.stop_requested()) FEDRA_FAIL("interrupted");
    if (!cohort.wait_for_workers(n, Clock::now() + wait)) {
      FEDRA_THROW(ErrorKind::kOverloaded, "round {}: only {} of {} workers connected within {} s", round,
                  cohort.size(), n, wait.count() / 1000.0);
    }
    const int64_t count = std::min(per_round, total - step);
    const auto t0 = Clock::now();
    Metrics line = run_round(cohort, ctx, round, step, count, pick(cohort));
    const double fit_s = Seconds(Clock::now() - t0).count();
    step += count;
    line.emplace_back("fit_s", fit_s);
    line.emplace_back("step_ms", 1000.0 * fit_s / static_cast<double>(count));
    line.emplace_back("epoch", static_cast<double>(step) / static_cast<double>(per_epoch));
    if (ctx.test_set != nullptr && plan_.eval_every > 0 &&
        (round % static_cast<uint32_t>(plan_.eval_every) == 0 || step >= total)) {
      const EvalStats s = evaluate_model(model_, *ctx.test_set, job_.loss);
      line.emplace_back("test_accuracy", s.accuracy);
      line.emplace_back("test_loss", s.loss);
    }
    ctx.report_round(round, static_cast<uint32_t>(rounds), std::move(line));
    completed_ = round;
  }
  if (!ctx.out_dir.empty()) save_model_file(ctx.out_dir + "/model.bin", model_state(*model_));
}

std::vector<Message> ModelParallelCoordinator::exchange(Cohort& cohort, uint32_t round,
                                                        const std::vector<WorkerInfo>& workers,
                                                        std::vector<Instruction> instructions, const char* done_kind,
                                                        const PartHandler& on_part, const std::string& why_fatal) {
  std::map<WorkerId, size_t> part_of;
  for (size_t i = 0; i < workers.size(); ++i) part_of[workers[i].id] = i;
  std::vector<std::optional<Message>> done(workers.size());
  std::string abort_reason;
  const auto step_timeout = std::chrono::milliseconds(static_cast<int64_t>(plan_.step_timeout_s * 1000));
  auto last_progress = Clock::now();

  Exchange ex;
  ex.deadline = [&] { return last_progress + step_timeout; };
  ex.on_part = [&](const WorkerInfo& w, Message&& m) {
    last_progress = Clock::now();
    on_part(part_of.at(w.id), w, std::move(m));
  };
  ex.on_reply = [&](const WorkerInfo& w, Message&& m) {
    FEDRA_REQUIRE(m.kind == done_kind, "expected '{}' from {}, got '{}'", done_kind, w.name, m.kind);
    last_progress = Clock::now();
    done[part_of.at(w.id)] = std::move(m);
  };
  ex.on_failure = [&](const Failure& f) {
    if (!abort_reason.empty()) return;
    const auto it = part_of.find(f.worker);
    abort_reason = fmt::format("{} ({} {}) failed: {}", f.name, plan_.part, it == part_of.end() ? 0 : it->second,
                               f.message);
    for (const auto& w : workers) {
      if (w.id != f.worker) cohort.cancel(w.id, fmt::format("{} round failed: {}", plan_.strategy, abort_reason));
    }
  };
  // The coordinator only relays and adds: one thread, leaving the cores to the workers.
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  const auto failures = cohort.exchange(std::move(instructions), ex);
  at::set_num_threads(threads);
  if (!abort_reason.empty() || !failures.empty()) {
    FEDRA_FAIL("{} round {} failed: {}; {}", plan_.strategy, round,
               abort_reason.empty() ? describe_failures(failures) : abort_reason, why_fatal);
  }
  std::vector<Message> replies;
  for (size_t i = 0; i < done.size(); ++i) {
    FEDRA_ASSERT(done[i].has_value(), "{} {} finished without a reply", plan_.part, i);
    replies.push_back(std::move(*done[i]));
  }
  return replies;
}

std::pair<NamedTensors, NamedTensors> ModelParallelCoordinator::split_reply(const Message& reply) {
  NamedTensors params, opt;
  for (const auto& [name, t] : reply.tensors) {
    if (name.rfind("opt/", 0) == 0) opt.emplace_back(name.substr(4), t);
    else if (name != "loss" && name != "examples") params.emplace_back(name, t);
  }
  return {params, opt};
}

Metrics ModelParallelCoordinator::loss_metrics(const RunContext& ctx, uint32_t round, int64_t first, int64_t count,
                                               const Message& reply, const std::string& who) const {
  auto find = [&](const char* name) {
    for (const auto& [n, t] : reply.tensors) {
      if (n == name) return t;
    }
    return at::Tensor();
  };
  const at::Tensor loss = find("loss"), examples = find("examples");
  check_losses(loss, examples, count, who);
  append_losses(ctx.out_dir, round, first, loss, examples);
  const auto [first_loss, mean_loss] = loss_summary(loss, examples);
  Metrics line;
  line.emplace_back("status", std::string("ok"));
  line.emplace_back("first_step", first);
  line.emplace_back("steps", count);
  line.emplace_back("train_loss", first_loss);
  line.emplace_back("train_loss_mean", mean_loss);
  line.emplace_back("train_examples", examples.sum().item<int64_t>());
  line.emplace_back("workers_asked", static_cast<int64_t>(plan_.parts));
  line.emplace_back("workers_ok", static_cast<int64_t>(plan_.parts));
  line.emplace_back("workers_failed", int64_t{0});
  return line;
}

}  // namespace fedra
