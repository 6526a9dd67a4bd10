// FedAvg's coordinator half: one round, through the parts (strategies/fedavg/part.h).
#include <algorithm>
#include <chrono>

#include <spdlog/spdlog.h>

#include <torch/torch.h>

#include "core/data/batching.h"
#include "core/data/tensor_checks.h"
#include "core/model/export.h"
#include "core/model/model.h"
#include "core/system/process.h"
#include "core/training/training.h"
#include "strategies/fedavg/fedavg.h"

namespace fedra::fedavg {

namespace {
double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

FedAvgCoordinator::FedAvgCoordinator(const Job& job, FedAvgOptions options)
    : job_(job), options_(std::move(options)), pipeline_(options_) {
  check_loss_name(job.loss);
  model_ = build_model(job.model, job.seed);
  for (auto& [name, t] : model_state(*model_)) global_.emplace_back(name, t.clone());
  round_.global = &global_;
  for (const auto& [name, t] : global_) round_.model_bytes += t.nbytes();
}

void FedAvgCoordinator::assemble() {
  if (pipeline_.assembled()) return;
  pipeline_.assemble(job_.strategy.empty() ? "fedavg" : job_.strategy);
  for (const auto& s : pipeline_.stages()) s->start(job_, global_, model_);
}

void FedAvgCoordinator::initialize(RunContext&) { assemble(); }

void FedAvgCoordinator::Tally::take(int64_t num_examples, double loss, double load_s, double train_s) {
  const auto n = static_cast<double>(num_examples);
  loss_sum += loss * n;
  weight_sum += n;
  examples += num_examples;
  worker_load_s = std::max(worker_load_s, load_s);
  worker_train_s = std::max(worker_train_s, train_s);
}

void FedAvgCoordinator::Tally::take_fit_metrics(int64_t num_examples, const std::map<std::string, double>& metrics) {
  const auto n = static_cast<double>(num_examples);
  for (auto it = metrics.lower_bound(kFitMetric); it != metrics.end() && it->first.rfind(kFitMetric, 0) == 0; ++it) {
    fit_metrics[it->first] += it->second * n;
    fit_weights[it->first] += n;
  }
}

std::vector<WorkerId> FedAvgCoordinator::select_workers(uint32_t round, Cohort& cohort, const RunContext& ctx) {
  std::vector<WorkerId> chosen = RoundStrategy::select_workers(round, cohort, ctx);
  round_.number = round;
  round_.connected = cohort.size();
  round_.accepted = 0;
  round_.refusal.clear();
  const std::vector<WorkerInfo> connected = cohort.workers();
  for (const auto& s : pipeline_.stages()) s->select(round_, connected, chosen);
  round_.refusal = pipeline_.rule().admits(round_, chosen.size());
  if (!round_.refusal.empty()) chosen.clear();  // nobody trains for a round that cannot be taken
  round_.sampled = chosen.size();
  pipeline_.rule().begin(round_);
  return chosen;
}

FitIns FedAvgCoordinator::configure(uint32_t round, const WorkerInfo& worker) {
  FitIns ins;
  ins.round = round;
  ins.weights = global_;  // shared, not copied: the frames reference this memory
  ins.train = options_.local();
  if (options_.exchange_only()) {  // the worker trains nothing and returns what it received
    ins.train.local_epochs(0);
    ins.train.local_steps(0);
  }
  ins.seed = worker_seed(job_.seed, round, worker.name);
  return ins;
}

Message FedAvgCoordinator::configure_fit(uint32_t round, const WorkerInfo& worker) {
  Message fit = configure(round, worker).encode();
  for (const auto& s : pipeline_.stages()) s->configure(round_, worker, fit);
  return fit;
}

std::vector<Failure> FedAvgCoordinator::run_fit(uint32_t round, Cohort& cohort, std::vector<Instruction> instructions,
                                                Deadline deadline, size_t& accepted) {
  const double cpu0 = thread_cpu_seconds();
  std::vector<Failure> failures;
  Stage::Taken taken;
  std::optional<std::vector<Failure>> own;
  if (Stage* exchanger = pipeline_.exchanger()) {
    own = exchanger->exchange(round_, cohort, instructions, deadline, pipeline_.rule(), taken);
  }
  if (own) {
    failures = std::move(*own);
    for (const auto& [name, f] : taken.figures) {
      const auto get = [&f = f](const char* k) { return f.count(k) ? f.at(k) : 0.0; };
      tally_.take(static_cast<int64_t>(get("num_examples")), get("train_loss"), get("load_s"), get("train_s"));
      tally_.take_fit_metrics(static_cast<int64_t>(get("num_examples")), f);
    }
    round_.accepted = taken.figures.size();
    accepted = round_.accepted;
  } else {
    failures = RoundStrategy::run_fit(round, cohort, std::move(instructions), deadline, accepted);
  }
  tally_.fit_cpu_s = thread_cpu_seconds() - cpu0;
  return failures;
}

void FedAvgCoordinator::accumulate_fit(uint32_t round, const WorkerInfo& worker, Message&& message) {
  FitRes result = FitRes::decode(std::move(message), round, worker.name);
  const auto t0 = std::chrono::steady_clock::now();
  try {
    check_layout(global_, result.weights);
    check_finite(result.weights);
  } catch (const Error& e) {
    FEDRA_FAIL("rejected update from {}: {}", worker.name, e.what());
  }
  const int64_t examples = result.num_examples;
  const double loss = result.train_loss, load_s = result.load_s, train_s = result.train_s;
  for (const auto& s : pipeline_.stages()) s->check(round_, worker, result);
  FEDRA_REQUIRE(result.side.empty(), "rejected update from {}: it carries '{}', which no part of this job asked for",
                worker.name, result.side.front().first);
  const std::map<std::string, double> figures = result.extra;
  pipeline_.rule().add(round_, worker, result);
  ++round_.accepted;  // only reached when the rule took it
  for (const auto& s : pipeline_.stages()) s->accepted(round_, worker, result);
  tally_.accumulate_s += seconds_since(t0);
  tally_.take(examples, loss, load_s, train_s);
  tally_.take_fit_metrics(examples, figures);
}

Metrics FedAvgCoordinator::aggregate_fit(uint32_t round, const std::vector<Failure>& failures) {
  const Tally tally = tally_;
  tally_ = Tally{};
  // Every stage closes the round (a fleet's clock moves on, DP's accountant is charged), whatever
  // happens next; then the round fails if a part refused it or too few updates were taken.
  std::string failure = round_.refusal;
  for (const auto& s : pipeline_.stages()) {
    try {
      s->close(round_);
    } catch (const Error& e) {
      if (failure.empty()) failure = e.what();
    }
  }
  if (failure.empty() && static_cast<int64_t>(round_.accepted) < options_.min_results()) {
    failure = fmt::format("round {}: {} result(s) accepted, min_results is {}{}", round, round_.accepted,
                          options_.min_results(),
                          failures.empty() ? std::string() : "; failures: " + describe_failures(failures));
  }
  if (!failure.empty()) {
    pipeline_.rule().discard();
    for (const auto& s : pipeline_.stages()) s->discard();
    FEDRA_FAIL("{}", failure);
  }
  return updated_round(round, tally);
}

Metrics FedAvgCoordinator::updated_round(uint32_t round, const Tally& tally) {
  const auto t0 = std::chrono::steady_clock::now();
  stepped_ = false;
  server_update(round, pipeline_.rule().aggregate(round_));
  FEDRA_REQUIRE(stepped_ || options_.server().server_opt() == ServerOpt::kNone,
                "round {}: this variant's server_update does not call FedAvgCoordinator::server_update, so "
                "server_opt={} would not run; leave server_opt at none",
                round, enum_name(options_.server().server_opt()));
  for (const auto& s : pipeline_.stages()) s->updated(round_, global_);
  Metrics m = {{"train_loss", tally.weight_sum > 0 ? tally.loss_sum / tally.weight_sum : 0.0},
               {"train_examples", tally.examples},
               {"accumulate_s", tally.accumulate_s},
               {"average_s", seconds_since(t0)},
               {"worker_load_s_max", tally.worker_load_s},
               {"worker_train_s_max", tally.worker_train_s},
               {"fit_cpu_s", tally.fit_cpu_s}};
  for (const auto& [name, sum] : tally.fit_metrics) m.emplace_back(name, sum / std::max(tally.fit_weights.at(name), 1.0));
  for (const auto& s : pipeline_.stages()) s->round_metrics(round_, m);
  for (auto& extra : round_metrics(round)) m.push_back(std::move(extra));
  return m;
}

void FedAvgCoordinator::server_update(uint32_t, NamedTensors aggregate) {
  pipeline_.server_step().step(global_, aggregate);
  stepped_ = true;
  set_global(std::move(aggregate));
}

void FedAvgCoordinator::set_global(NamedTensors next) {
  check_layout(global_, next);
  NamedTensors previous = std::move(global_);
  global_ = std::move(next);
  pipeline_.rule().recycle(std::move(previous));
}

Metrics FedAvgCoordinator::standing_metrics(uint32_t) {
  Metrics m;
  for (const auto& s : pipeline_.stages()) s->standing_metrics(round_, m);
  return m;
}

NamedTensors FedAvgCoordinator::checkpoint_state() const {
  NamedTensors state = global_;
  pipeline_.save(state);
  return state;
}

void FedAvgCoordinator::restore(NamedTensors state) {
  assemble();  // the parts' state is theirs to load
  pipeline_.load(state);
  check_layout(global_, state);  // the checkpoint must be of this model
  global_ = std::move(state);
}

void FedAvgCoordinator::finished(RunContext& ctx) {
  if (ctx.out_dir.empty()) return;
  load_model_state(*model_, global_);
  save_trained_model(ctx.out_dir, model_);
}

StrategyInfo fedavg_strategy() {
  return variant<FedAvgCoordinator>("fedavg",
                                    "Federated averaging: local epochs on each worker, example-weighted average");
}

}  // namespace fedra::fedavg
