// FedAsync and FedBuff in one process (LocalCohort), and FedAvg on a simulated fleet: the virtual
// clock makes a run a function of its seed; staleness weights are the papers'; refused, lost and
// applied updates add up; churn does not stall a run; a run resumes from its checkpoint.
#include "tests/testing.h"

#include <cmath>
#include <map>
#include <optional>

#include <torch/torch.h>

#include "core/model/model.h"
#include "strategies/async/async.h"
#include "strategies/builtin.h"
#include "tests/support/local_cohort.h"
#include "tests/test_util.h"

using namespace fedra;
using namespace fedra::test;
using namespace fedra::test::lines;

namespace {

constexpr uint64_t kSeed = 5;
const char* kData = "fmnist:limit=1600,test_limit=500";

struct Run {
  std::vector<Metrics> lines;
  NamedTensors model;
  std::string error;
  NamedTensors checkpoint;  // the state handed to ctx.checkpoint at update `checkpoint_at`
};

// Every figure of a line except those measured on the wall clock.
std::map<std::string, MetricValue> simulated(const Metrics& line) {
  std::map<std::string, MetricValue> out;
  for (const auto& [k, v] : line) {
    if (k == "wall_time_s" || k == "worker_train_s_max" || k == "eval_s" || k == "fit_s" || k == "accumulate_s" ||
        k == "average_s" || k == "fit_cpu_s" || k == "worker_load_s_max" || k == "fleet_time_s")
      continue;
    out.emplace(k, v);
  }
  return out;
}

// The two lines agree on every simulated figure (a difference is printed).
bool same_simulated(const Metrics& a, const Metrics& b) {
  const auto x = simulated(a), y = simulated(b);
  if (x == y) return true;
  for (const auto& [k, v] : x) {
    if (!y.count(k) || y.at(k) != v) MESSAGE("metric " << k << " differs");
  }
  return false;
}

Run run(const std::string& strategy, std::map<std::string, std::string> options, int64_t workers,
        uint64_t seed = kSeed, uint32_t checkpoint_at = 0, uint32_t resume_round = 0, NamedTensors resume = {}) {
  options.emplace("local_epochs", "1");
  options.emplace("batch_size", "16");
  options.emplace("lr", "0.1");
  options.emplace("momentum", "0");
  const Job job = make_job(strategy, "mlp:784-16-10", "ce", options, seed);
  StrategyRegistry registry;
  register_builtin_strategies(registry);
  auto coordinator = registry.get(strategy).make_coordinator(job);
  LocalCohort cohort(job, registry, iid_workers(kData, workers, kSeed));
  TempDir dir;
  Dataset test = load_dataset(kData).test;
  RunContext ctx;
  ctx.job = job;
  ctx.out_dir = dir.path();
  ctx.test_set = &test;
  ctx.wait_timeout = std::chrono::milliseconds(500);
  ctx.resume_round = resume_round;
  ctx.resume_state = std::move(resume);
  Run out;
  ctx.report_round = [&](uint32_t, uint32_t, Metrics m) { out.lines.push_back(std::move(m)); };
  ctx.checkpoint = [&](uint32_t round, uint32_t, const std::function<NamedTensors()>& state) {
    if (round == checkpoint_at) out.checkpoint = state();
  };
  try {
    coordinator->run(cohort, ctx);
  } catch (const Error& e) {
    out.error = e.what();
  }
  out.model = load_model_file(dir / "model.bin");
  return out;
}

}  // namespace

TEST_CASE("async: staleness functions are the papers'") {
  async::AsyncOptions o;
  o.staleness(async::Staleness::kConstant);
  CHECK(o.staleness_weight(7) == 1.0);
  o.staleness(async::Staleness::kPolynomial).staleness_a(0.5);
  CHECK(o.staleness_weight(0) == 1.0);
  CHECK(o.staleness_weight(3) == doctest::Approx(0.5));  // (3 + 1)^-0.5
  o.staleness(async::Staleness::kHinge).staleness_a(2).staleness_b(4);
  CHECK(o.staleness_weight(4) == 1.0);
  CHECK(o.staleness_weight(6) == doctest::Approx(1.0 / 5.0));  // 1 / (2 (6 - 4) + 1)
  o.local_epochs(2).batch_size(10);
  CHECK(o.planned_steps(95) == 20);
  o.local_steps(7);
  CHECK(o.planned_steps(95) == 7);
}

TEST_CASE("async: on the virtual clock a run is a function of its seed") {
  const std::map<std::string, std::string> o = {{"updates", "12"},       {"buffer", "3"},
                                                {"concurrency", "5"},    {"clock", "virtual"},
                                                {"eval_every", "4"},     {"fleet", "lognormal:sigma=1.8,online=3,offline=1"}};
  const Run a = run("fedbuff", o, 8), b = run("fedbuff", o, 8), c = run("fedbuff", o, 8, kSeed + 1);
  REQUIRE(a.error.empty());
  REQUIRE(a.lines.size() == 12);
  REQUIRE(b.lines.size() == 12);
  for (size_t i = 0; i < a.lines.size(); ++i) CHECK(same_simulated(a.lines[i], b.lines[i]));
  CHECK(identical(a.model, b.model));
  CHECK_FALSE(identical(a.model, c.model));
  // Simulated time moves forward; every dispatch ended as applied, refused or lost, or is in flight.
  double t = 0;
  for (const auto& line : a.lines) {
    CHECK(metric<double>(line, "virtual_time_s") >= t);
    t = metric<double>(line, "virtual_time_s");
  }
  CHECK(t > 0);
  const Metrics& last = a.lines.back();
  CHECK(metric<int64_t>(last, "updates_applied") == 36);
  const int64_t ended = metric<int64_t>(last, "updates_applied") + metric<int64_t>(last, "updates_refused") +
                        metric<int64_t>(last, "updates_lost");
  CHECK(ended <= metric<int64_t>(last, "dispatches"));
  CHECK(ended + 5 >= metric<int64_t>(last, "dispatches"));  // at most `concurrency` in flight
  CHECK(metric<double>(last, "test_accuracy") > 0.5);
}

TEST_CASE("async: fedasync and fedbuff learn; max_staleness refuses and counts") {
  const Run fa = run("fedasync", {{"updates", "40"}, {"clock", "virtual"}, {"eval_every", "40"},
                                  {"fleet", "lognormal:sigma=1"}}, 6);
  REQUIRE(fa.error.empty());
  CHECK(metric<int64_t>(fa.lines.back(), "updates_applied") == 40);
  CHECK(metric<double>(fa.lines.back(), "test_accuracy") > 0.6);
  // Half the devices 8x slower: their updates come back about 16 server updates old.
  const Run strict = run("fedbuff", {{"updates", "20"}, {"buffer", "2"}, {"max_staleness", "1"}, {"clock", "virtual"},
                                     {"eval_every", "0"}, {"fleet", "stragglers:fraction=0.5,slowdown=8"}}, 8);
  REQUIRE(strict.error.empty());
  const Metrics& last = strict.lines.back();
  CHECK(metric<int64_t>(last, "updates_refused") > 0);
  CHECK(metric<int64_t>(last, "updates_applied") == 40);
  CHECK(metric<int64_t>(last, "staleness_max") <= 1);
  for (const auto& line : strict.lines) CHECK(metric<int64_t>(line, "staleness_max") <= 1);
}

TEST_CASE("async: churn loses updates but does not stall the run") {
  const Run r = run("fedbuff", {{"updates", "10"}, {"buffer", "2"}, {"clock", "virtual"}, {"eval_every", "0"},
                                {"fleet", "lognormal:sigma=1,online=0.4,offline=0.4"}}, 6);
  REQUIRE(r.error.empty());
  CHECK(r.lines.size() == 10);
  CHECK(metric<int64_t>(r.lines.back(), "updates_lost") > 0);
}

TEST_CASE("async: a run resumes from its checkpoint with the clock and counters where they were") {
  const std::map<std::string, std::string> o = {{"updates", "8"}, {"buffer", "2"}, {"clock", "virtual"},
                                                {"eval_every", "0"}, {"fleet", "lognormal:sigma=1"},
                                                {"server_opt", "adam"}};
  const Run first = run("fedbuff", o, 4, kSeed, /*checkpoint_at=*/4);
  REQUIRE(first.error.empty());
  REQUIRE_FALSE(first.checkpoint.empty());
  const Run resumed = run("fedbuff", o, 4, kSeed, 0, /*resume_round=*/4, first.checkpoint);
  REQUIRE(resumed.error.empty());
  REQUIRE(resumed.lines.size() == 4);
  CHECK(metric<double>(resumed.lines.front(), "virtual_time_s") >= metric<double>(first.lines[3], "virtual_time_s"));
  CHECK(metric<int64_t>(resumed.lines.back(), "updates_applied") == 16);
  CHECK(metric<double>(resumed.lines.front(), "device_s") > metric<double>(first.lines[3], "device_s"));
}

TEST_CASE("async: options are checked") {
  StrategyRegistry registry;
  register_builtin_strategies(registry);
  CHECK_THROWS_WITH_AS(registry.get("fedasync").make_coordinator(make_job("fedasync", "mlp:16-3", "ce", {{"buffer", "4"}}, 1)),
                       doctest::Contains("fedasync applies every update"), Error);
  CHECK_THROWS_WITH_AS(registry.get("fedbuff").make_coordinator(make_job("fedbuff", "mlp:16-3", "ce", {{"mixing", "0"}}, 1)),
                       doctest::Contains("fedbuff.mixing"), Error);
  CHECK_THROWS_WITH_AS(registry.get("fedbuff").make_coordinator(make_job("fedbuff", "mlp:16-3", "ce", {{"fleet", "fast"}}, 1)),
                       doctest::Contains("unknown fleet 'fast'"), Error);
}

TEST_CASE("fedavg on a simulated fleet: rounds last as their slowest update, a deadline drops the late") {
  const std::map<std::string, std::string> o = {{"rounds", "3"}, {"clock", "virtual"}, {"eval_every", "0"},
                                                {"fleet", "stragglers:fraction=0.3,slowdown=10,step=0.1"}};
  const Run plain = run("fedavg", o, 8), again = run("fedavg", o, 8);
  REQUIRE(plain.error.empty());
  for (size_t i = 0; i < plain.lines.size(); ++i) CHECK(same_simulated(plain.lines[i], again.lines[i]));
  // Every round asks all 8 (same data sizes, steps and fleet): each lasts as long, 10 times a fast
  // device's update when a straggler is among them.
  const double round_s = metric<double>(plain.lines[0], "virtual_time_s");
  CHECK(round_s > 0);
  CHECK(metric<double>(plain.lines[2], "virtual_time_s") == doctest::Approx(3 * round_s));
  auto deadline = o;
  deadline["round_deadline"] = fmt::format("{}", round_s / 2);  // the fast finish (round_s / 10), the slow do not
  const Run cut = run("fedavg", deadline, 8);
  REQUIRE(cut.error.empty());
  int64_t late = 0;
  for (const auto& line : cut.lines) late += metric<int64_t>(line, "updates_late");
  CHECK(metric<double>(cut.lines.back(), "virtual_time_s") == doctest::Approx(3 * round_s / 2));
  CHECK(late >= 3);
  CHECK(metric<int64_t>(cut.lines.back(), "workers_ok") > 0);
}
