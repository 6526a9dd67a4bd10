// Secure aggregation in FedAvg, in one process (LocalCohort): the aggregate equals plain FedAvg's
// to the fixed-point tolerance for 3, 10 and 50 workers (all pairs and SecAgg+ neighbourhoods);
// dropouts after each step, up to n - t, still give the right sum, one more fails the round with
// the reason and the next round goes on; wrong shares, replayed messages and vectors of another
// length are refused naming the worker.
#include "tests/testing.h"

#include <map>
#include <optional>

#include <torch/torch.h>

#include "core/model/model.h"
#include "strategies/builtin.h"
#include "tests/support/local_cohort.h"
#include "tests/test_util.h"

using namespace fedra;
using namespace fedra::test;

namespace {

constexpr uint64_t kSeed = 11;

struct Run {
  std::vector<Metrics> lines;
  NamedTensors model;
  std::string error;  // the job's failure, if it failed
};

template <class T>
std::optional<T> metric(const Metrics& line, const std::string& name) {
  for (const auto& [k, v] : line) {
    if (k == name) return std::get<T>(v);
  }
  return std::nullopt;
}

// FedAvg over `workers` iid clients of a small synthetic task; `gone` are disconnected before
// the first round (the plain run's stand-in for a worker that drops out every round).
Run run(std::map<std::string, std::string> options, int64_t workers, const std::vector<std::string>& gone = {}) {
  options.emplace("rounds", "2");
  options.emplace("local_epochs", "1");
  options.emplace("batch_size", "16");
  options.emplace("lr", "0.1");
  options.emplace("momentum", "0");
  options.emplace("eval_every", "0");
  options.emplace("secagg_timeout", "10");
  const Job job = make_job("fedavg", "mlp:16-24-3", "ce", options, kSeed);
  StrategyRegistry registry;
  register_builtin_strategies(registry);
  auto coordinator = registry.get("fedavg").make_coordinator(job);
  LocalCohort cohort(job, registry, iid_workers("synthetic:n=1200,features=16,classes=3,seed=5", workers, kSeed));
  for (const auto& name : gone) cohort.disconnect(name);
  TempDir dir;
  RunContext ctx;
  ctx.job = job;
  ctx.out_dir = dir.path();
  ctx.wait_timeout = std::chrono::milliseconds(500);
  Run out;
  ctx.report_round = [&](uint32_t, uint32_t, Metrics m) { out.lines.push_back(std::move(m)); };
  try {
    coordinator->run(cohort, ctx);
  } catch (const Error& e) {
    out.error = e.what();
  }
  out.model = load_model_file(dir / "model.bin");
  return out;
}

std::map<std::string, std::string> secagg(std::map<std::string, std::string> extra = {}) {
  extra["secagg"] = "true";
  return extra;
}

}  // namespace

TEST_CASE("secagg: the aggregate equals plain FedAvg's to the fixed-point tolerance, 3, 10 and 50 workers") {
  struct Case {
    int64_t workers;
    std::map<std::string, std::string> options;
  };
  for (const Case& c : {Case{3, {}}, Case{10, {{"secagg_neighbours", "4"}}}, Case{10, {{"secagg_bits", "64"}}},
                        Case{50, {{"secagg_neighbours", "8"}}}}) {
    CAPTURE(c.workers);
    CAPTURE(c.options.size());
    const Run plain = run({}, c.workers);
    const Run secure = run(secagg(c.options), c.workers);
    REQUIRE(plain.error.empty());
    REQUIRE(secure.error == "");
    REQUIRE(secure.lines.size() == 2);
    // 32 bits: each of n terms rounded by 2^-(f+1), f ~ 31 - log2(examples * clip): ~1e-6 here.
    CHECK(max_diff(secure.model, plain.model) < 1e-5);
    CHECK(max_diff(secure.model, plain.model) > 0);  // not the same code path by accident
    for (const auto& line : secure.lines) {
      CHECK(metric<std::string>(line, "status") == "ok");
      CHECK(metric<int64_t>(line, "workers_ok") == c.workers);
      CHECK(metric<int64_t>(line, "secagg_dropped") == 0);
      CHECK(metric<double>(line, "train_loss") == doctest::Approx(*metric<double>(plain.lines[0], "train_loss")).epsilon(0.5));
    }
  }
}

TEST_CASE("secagg: dropouts after keys, shares and upload, up to n - t, still give the right sum") {
  // 7 workers, every pair: each secret has 7 holders (or 6, if worker-1's failure beats the last
  // keys), t = 4, so 3 may drop. worker-1 after its keys and worker-3 after its shares never
  // upload: the sum is the other five's, as plain FedAvg without them; worker-4 drops after
  // uploading: its update is in the sum, its mask rebuilt from the 4 that remain.
  const Run plain = run({}, 7, {"worker-1", "worker-3"});
  const Run secure = run(secagg({{"testing.secagg_drop", "worker-1:keys,worker-3:shares,worker-4:masked"}}), 7);
  REQUIRE(plain.error.empty());
  REQUIRE(secure.error == "");
  CHECK(max_diff(secure.model, plain.model) < 1e-5);
  for (const auto& line : secure.lines) {
    CHECK(metric<std::string>(line, "status") == "ok");
    CHECK(metric<int64_t>(line, "secagg_dropped") == 3);
    CHECK(metric<int64_t>(line, "workers_ok") == 5);  // uploads in the sum
  }
}

TEST_CASE("secagg: one dropout more than n - t fails the round with the reason, and the next round goes on") {
  // 5 workers, t = 3 (of 5 holders): three drop after uploading in round 1, so two shares of each
  // mask come back.
  const Run secure =
      run(secagg({{"testing.secagg_drop", "worker-0:masked@1,worker-1:masked@1,worker-2:masked@1"}}), 5);
  REQUIRE(secure.lines.size() == 2);
  CHECK(metric<std::string>(secure.lines[0], "status") == "failed");
  const std::string reason = metric<std::string>(secure.lines[0], "reason").value_or("");
  CHECK(contains(reason, "2 share(s) of"));
  CHECK(contains(reason, "the threshold is t = 3"));
  CHECK(metric<std::string>(secure.lines[1], "status") == "ok");
  CHECK(secure.error == "");
  // Fewer uploads than t: refused before anyone is asked to reveal.
  const Run early = run(secagg({{"testing.secagg_drop", "worker-0:shares@1,worker-1:shares@1,worker-2:shares@1"}}), 5);
  CHECK(metric<std::string>(early.lines[0], "status") == "failed");
  CHECK(contains(metric<std::string>(early.lines[0], "reason").value_or(""), "fewer than the threshold"));
  CHECK(metric<std::string>(early.lines[1], "status") == "ok");
}

TEST_CASE("secagg: a wrong share, a replayed message and a vector of another length are refused, naming the worker") {
  SUBCASE("wrong share: named, rebuilt from the others, the sum still right") {
    const Run plain = run({}, 5);
    const Run secure = run(secagg({{"testing.secagg_cheat", "worker-2:wrong_share"}}), 5);
    REQUIRE(secure.error == "");
    CHECK(max_diff(secure.model, plain.model) < 1e-5);
    CHECK(metric<int64_t>(secure.lines[0], "secagg_refused") == 1);
  }
  SUBCASE("replay: the worker is refused and left out") {
    const Run plain = run({}, 5, {"worker-3"});
    const Run secure = run(secagg({{"testing.secagg_cheat", "worker-3:replay"}}), 5);
    REQUIRE(secure.error == "");
    CHECK(max_diff(secure.model, plain.model) < 1e-5);
    CHECK(metric<int64_t>(secure.lines[0], "secagg_refused") == 1);
    CHECK(metric<int64_t>(secure.lines[0], "workers_ok") == 4);
  }
  SUBCASE("length: refused; its masks are removed as a dropout's") {
    const Run plain = run({}, 5, {"worker-0"});
    const Run secure = run(secagg({{"testing.secagg_cheat", "worker-0:length"}}), 5);
    REQUIRE(secure.error == "");
    CHECK(max_diff(secure.model, plain.model) < 1e-5);
    CHECK(metric<int64_t>(secure.lines[0], "secagg_refused") == 1);
  }
}

TEST_CASE("secagg: options that need each update alone are refused") {
  StrategyRegistry registry;
  register_builtin_strategies(registry);
  for (const auto& [k, v] : std::map<std::string, std::string>{
           {"aggregate", "median"}, {"clip_norm", "1"}, {"dp", "server"}, {"scaffold", "true"}}) {
    CAPTURE(k);
    std::map<std::string, std::string> o = {{"secagg", "true"}, {k, v}};
    if (k == "scaffold") o["momentum"] = "0";
    CHECK_THROWS_AS(registry.get("fedavg").make_coordinator(make_job("fedavg", "mlp:16-8-3", "ce", o, 1)), Error);
  }
}
