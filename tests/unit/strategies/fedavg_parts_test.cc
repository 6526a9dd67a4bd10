// FedAvg from parts (strategies/fedavg/part.h): a variant's rule, server step and stage compose
// with DP and secure aggregation, or are refused naming both sides; never bypassed.
#include "tests/testing.h"

#include <cmath>

#include <torch/torch.h>

#include "core/federated/robust_aggregation.h"
#include "core/model/model.h"
#include "strategies/builtin.h"
#include "strategies/fedavg/fedavg.h"
#include "tests/test_util.h"

using namespace fedra;
using namespace fedra::fedavg;
using namespace fedra::test;
using namespace fedra::test::lines;

namespace {

constexpr uint64_t kSeed = 5;
const char* kData = "synthetic:n=240,features=16,classes=2,seed=3";

// --- A variant's rules: the median (needs each update) and the unweighted mean (a weighted sum).

struct Median : Rule {
  std::string name() const override { return "median"; }
  void add(const Round&, const WorkerInfo&, FitRes& update) override { held.push_back(std::move(update.weights)); }
  NamedTensors aggregate(const Round&) override {
    NamedTensors out = coordinate_median(held);
    held.clear();
    return out;
  }
  void discard() override { held.clear(); }
  std::vector<NamedTensors> held;
};

// Every worker's model counts once, whatever its example count: linear, so secure aggregation can
// take it from the sum of the updates.
struct EqualMean : Rule {
  std::string name() const override { return "equal mean"; }
  bool linear() const override { return true; }
  double weight(const WorkerInfo&) const override { return 1.0; }
  void add(const Round& round, const WorkerInfo&, FitRes& update) override {
    if (sum.empty()) {
      for (const auto& [n, t] : update.weights) sum.emplace_back(n, at::zeros_like(t, at::kDouble));
    }
    for (size_t i = 0; i < sum.size(); ++i) sum[i].second += update.weights[i].second.to(at::kDouble) - (*round.global)[i].second.to(at::kDouble);
    ++count;
  }
  void add_sum(const Round&, NamedTensors weighted_sum, double weight_sum, size_t) override {
    sum = std::move(weighted_sum);
    count = static_cast<size_t>(weight_sum);
  }
  NamedTensors aggregate(const Round& round) override {
    NamedTensors next;
    size_t j = 0;
    for (const auto& [n, g] : *round.global) {
      next.emplace_back(n, g.is_floating_point() ? (g.to(at::kDouble) + sum[j++].second / static_cast<double>(count)).to(g.scalar_type())
                                                 : g.clone());
    }
    discard();
    return next;
  }
  void discard() override {
    sum.clear();
    count = 0;
  }
  NamedTensors sum;
  size_t count = 0;
};

template <class R>
struct WithRule : FedAvgCoordinator {
  WithRule(const Job& job, const FedAvgOptions& o) : FedAvgCoordinator(job, o) { set_rule(std::make_unique<R>()); }
  using FedAvgCoordinator::global;
};

template <class R>
StrategyRegistry registry_with(const std::string& name) {
  StrategyRegistry registry;
  registry.add(variant<WithRule<R>>(name, "test"));
  return registry;
}

Job job_of(const std::string& strategy, std::map<std::string, std::string> options) {
  options.emplace("batch_size", "16");
  options.emplace("lr", "0.1");
  return make_job(strategy, "mlp:16-8-1", "bce", std::move(options), kSeed);
}

struct InProcess {
  std::vector<Metrics> lines;
  NamedTensors model;
};

// Runs `c` against FedAvg's worker halves (from `registry`) in one process.
InProcess run(FedAvgCoordinator& c, const StrategyRegistry& registry, const Job& job, int64_t workers,
              NamedTensors (*global_of)(FedAvgCoordinator&)) {
  LocalCohort cohort(job, registry, iid_workers(kData, workers, kSeed));
  RunContext ctx;
  ctx.job = job;
  ctx.wait_timeout = std::chrono::milliseconds(1000);
  InProcess r;
  ctx.report_round = [&](uint32_t, uint32_t, Metrics m) { r.lines.push_back(std::move(m)); };
  c.run(cohort, ctx);
  r.model = global_of(c);
  return r;
}

template <class R>
NamedTensors global_of(FedAvgCoordinator& c) {
  NamedTensors out;
  for (const auto& [n, t] : static_cast<WithRule<R>&>(c).global()) out.emplace_back(n, t.to(at::kDouble));
  return out;
}

}  // namespace

TEST_CASE("a variant's rule that needs each update is refused beside DP and secure aggregation, naming both") {
  const StrategyRegistry registry = registry_with<Median>("fedmed");
  const auto refusal = [&](std::map<std::string, std::string> o) {
    try {
      registry.get("fedmed").make_coordinator(job_of("fedmed", std::move(o)));
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("(not refused)");
  };
  CHECK(refusal({{"dp", "server"}}) ==
        "fedmed.dp needs aggregate=mean: its guarantee is for the noised mean of clipped updates, not for the "
        "variant's rule 'median'");
  CHECK(refusal({{"dp", "client"}}) ==
        "fedmed.dp needs aggregate=mean: its guarantee is for the noised mean of clipped updates, not for the "
        "variant's rule 'median'");
  CHECK(refusal({{"secagg", "true"}}) ==
        "fedmed.secagg gives the coordinator only the sum of the updates, and the variant's rule 'median' needs "
        "each update (it is not a weighted sum); use aggregate=mean");
  // And a robust rule the options ask for beside the variant's own: one of them would be ignored.
  CHECK(refusal({{"aggregate", "krum"}}) ==
        "this variant sets its own rule 'median', so aggregate=krum would be ignored; leave aggregate=mean");
  // Alone, it runs: the median of the workers' models (checked against the rule by hand).
  const Job job = job_of("fedmed", {{"rounds", "1"}});
  WithRule<Median> c(job, parse_options<FedAvgOptions>(job.options));
  const NamedTensors before = global_of<Median>(c);
  const InProcess r = run(c, registry, job, 3, &global_of<Median>);
  REQUIRE(r.lines.size() == 1);
  CHECK(metric<std::string>(r.lines[0], "status") == "ok");
  CHECK(max_diff(r.model, before) > 1e-3);
}

TEST_CASE("a variant's linear rule runs under secure aggregation: the same model as without it, within 1e-5") {
  const StrategyRegistry registry = registry_with<EqualMean>("equal");
  const auto final_model = [&](std::map<std::string, std::string> extra) {
    std::map<std::string, std::string> o = {{"rounds", "2"}};
    o.insert(extra.begin(), extra.end());
    const Job job = job_of("equal", o);
    auto c = registry.get("equal").make_coordinator(job);
    auto& coordinator = static_cast<WithRule<EqualMean>&>(*c);
    return run(coordinator, registry, job, 3, &global_of<EqualMean>);
  };
  const InProcess plain = final_model({});
  const InProcess secure = final_model({{"secagg", "true"}});
  REQUIRE(secure.lines.size() == 2);
  CHECK(metric<std::string>(secure.lines[1], "status") == "ok");
  CHECK(metric<int64_t>(secure.lines[1], "secagg_dropped") == 0);
  CHECK(max_diff(secure.model, plain.model) < 1e-5);
  // With dp=client the rule is DP's noised mean, which the variant's rule would replace: refused.
  CHECK_THROWS_WITH_AS(registry.get("equal").make_coordinator(job_of("equal", {{"dp", "client"}, {"secagg", "true"}})),
                       doctest::Contains("equal.dp needs aggregate=mean"), Error);
}

namespace {

// --- A part added in one place: its coordinator stage asks every worker to shrink its update by a
// factor s (a field of its own in fedavg.fit), its worker stage does so, and the stage reports
// the largest update norm it took.

constexpr const char* kShrink = "shrink.s";

struct ShrinkStage : Stage {
  explicit ShrinkStage(double s) : s_(s) {}
  std::string name() const override { return "shrink"; }
  std::string needs_each_update() const override { return "it measures each update"; }
  void configure(const Round&, const WorkerInfo&, Message& fit) override { fit.metrics[kShrink] = s_; }
  void check(const Round& round, const WorkerInfo&, FitRes& update) override {
    norm_ = std::max(norm_, update_norm(*round.global, update.weights));
  }
  void round_metrics(const Round&, Metrics& line) const override { line.emplace_back("update_norm_max", reported_); }
  void close(Round&) override { reported_ = norm_; }
  void updated(const Round&, const NamedTensors&) override { norm_ = 0; }
  double s_, norm_ = 0, reported_ = 0;
};

struct ShrinkWorkerStage : WorkerStage {
  void after(LocalFit& fit) override {
    if (!fit.request.metrics.count(kShrink)) return;
    const double s = fit.request.metric(kShrink);
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < fit.result.weights.size(); ++i) {
      at::Tensor& w = fit.result.weights[i].second;
      const at::Tensor& g = fit.ins.weights[i].second;
      if (w.is_floating_point()) w = g + s * (w - g);
    }
  }
};

struct Shrinking : FedAvgCoordinator {
  Shrinking(const Job& job, const FedAvgOptions& o) : FedAvgCoordinator(job, o) {
    add_stage(std::make_unique<ShrinkStage>(0.5));
  }
  using FedAvgCoordinator::global;
};

struct ShrinkingWorker : FedAvgWorker {
  explicit ShrinkingWorker(const Job& job) : FedAvgWorker(job) { add_stage(std::make_unique<ShrinkWorkerStage>()); }
};

NamedTensors shrinking_global(FedAvgCoordinator& c) {
  NamedTensors out;
  for (const auto& [n, t] : static_cast<Shrinking&>(c).global()) out.emplace_back(n, t.to(at::kDouble));
  return out;
}

struct Plain : FedAvgCoordinator {
  using FedAvgCoordinator::FedAvgCoordinator;
  using FedAvgCoordinator::global;
};

NamedTensors plain_global(FedAvgCoordinator& c) {
  NamedTensors out;
  for (const auto& [n, t] : static_cast<Plain&>(c).global()) out.emplace_back(n, t.to(at::kDouble));
  return out;
}

}  // namespace

TEST_CASE("a stage added in one place: both halves run, its figure is reported, secure aggregation refuses it") {
  StrategyRegistry registry;
  registry.add(variant<Shrinking, FedAvgOptions, ShrinkingWorker>("shrink", "test"));
  register_builtin_strategies(registry);
  const Job job = job_of("shrink", {{"rounds", "1"}});
  Shrinking shrinking(job, parse_options<FedAvgOptions>(job.options));
  const NamedTensors start = shrinking_global(shrinking);
  const InProcess half = run(shrinking, registry, job, 3, &shrinking_global);
  const Job plain_job = job_of("fedavg", {{"rounds", "1"}});
  Plain plain(plain_job, parse_options<FedAvgOptions>(plain_job.options));
  const InProcess full = run(plain, registry, plain_job, 3, &plain_global);
  // Every update halved, so the weighted mean moves half as far: start + 0.5 (mean - start).
  NamedTensors want;
  for (size_t i = 0; i < start.size(); ++i) {
    want.emplace_back(start[i].first, start[i].second + 0.5 * (full.model[i].second - start[i].second));
  }
  CHECK(max_diff(half.model, want) < 1e-6);
  const double norm = metric<double>(half.lines[0], "update_norm_max");
  CHECK(norm > 0);
  CHECK_THROWS_WITH_AS(registry.get("shrink").make_coordinator(job_of("shrink", {{"secagg", "true"}})),
                       "shrink.secagg gives the coordinator only the sum of the updates, so shrink.shrink cannot run: "
                       "it measures each update; turn one of them off",
                       Error);
}

namespace {

// A server step with state, as fedavgm's momentum: its velocity must survive a checkpoint.
struct Velocity : ServerStep {
  std::string name() const override { return "velocity"; }
  void step(const NamedTensors& global, NamedTensors& aggregate) override {
    for (size_t i = 0; i < global.size(); ++i) {
      const at::Tensor d = global[i].second - aggregate[i].second;
      if (v.size() <= i) v.emplace_back("velocity/" + global[i].first, d);
      else v[i].second.mul_(0.9).add_(d);
      aggregate[i].second = global[i].second - v[i].second;
    }
  }
  NamedTensors state() const override { return v; }
  void load_state(NamedTensors& state) override {
    NamedTensors rest;
    for (auto& [n, t] : state) (n.rfind("velocity/", 0) == 0 ? v : rest).emplace_back(n, std::move(t));
    state = std::move(rest);
  }
  NamedTensors v;
};

struct WithVelocity : FedAvgCoordinator {
  WithVelocity(const Job& job, const FedAvgOptions& o) : FedAvgCoordinator(job, o) {
    set_server_step(std::make_unique<Velocity>());
  }
  using FedAvgCoordinator::global;
};

NamedTensors velocity_global(FedAvgCoordinator& c) { return static_cast<WithVelocity&>(c).global(); }

}  // namespace

TEST_CASE("a variant's server step keeps its state in checkpoints: a resumed run equals the uninterrupted one") {
  StrategyRegistry registry;
  registry.add(variant<WithVelocity>("velocity", "test"));
  const Job job = job_of("velocity", {{"rounds", "4"}, {"momentum", "0"}});
  WithVelocity whole(job, parse_options<FedAvgOptions>(job.options));
  const InProcess uninterrupted = run(whole, registry, job, 2, &velocity_global);
  // The first two rounds, checkpointed; then a new coordinator resumes from round 2.
  NamedTensors saved;
  {
    const Job two = job_of("velocity", {{"rounds", "4"}, {"momentum", "0"}});
    WithVelocity first(two, parse_options<FedAvgOptions>(two.options));
    LocalCohort cohort(two, registry, iid_workers(kData, 2, kSeed));
    RunContext ctx;
    ctx.job = two;
    ctx.report_round = [](uint32_t, uint32_t, Metrics) {};
    ctx.checkpoint = [&](uint32_t round, uint32_t, const std::function<NamedTensors()>& state) {
      if (round == 2) saved = state();
    };
    ctx.stop_requested = [&] { return !saved.empty(); };
    CHECK_THROWS_AS(first.run(cohort, ctx), Error);  // interrupted before round 3
  }
  bool has_velocity = false;
  for (const auto& [n, t] : saved) has_velocity = has_velocity || n.rfind("velocity/", 0) == 0;
  CHECK(has_velocity);
  WithVelocity resumed(job, parse_options<FedAvgOptions>(job.options));
  LocalCohort cohort(job, registry, iid_workers(kData, 2, kSeed));
  RunContext ctx;
  ctx.job = job;
  ctx.report_round = [](uint32_t, uint32_t, Metrics) {};
  ctx.resume_round = 2;
  ctx.resume_state = saved;
  resumed.run(cohort, ctx);
  CHECK(identical(resumed.global(), uninterrupted.model));
}
