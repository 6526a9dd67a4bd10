// FedAsync and FedBuff with real processes over loopback TCP: on the simulated clock the same seed
// gives the same metrics whatever the number of processes the clients run in; a worker process
// that dies mid-update loses only its own update; a wall-clock fleet with churn and stragglers
// finishes.
#include "tests/testing.h"

#include <map>
#include <string>

#include "tests/test_util.h"

using namespace fedra;
using namespace fedra::test;

namespace {

const std::vector<std::string> kCommon = {"simulate", "--dataset", "fmnist:limit=3000", "--model", "mlp:784-32-10",
                                          "--worker-threads", "1", "--threads", "1"};

std::vector<nlohmann::json> simulate(const TempDir& dir, const std::string& name, std::vector<std::string> args) {
  std::vector<std::string> argv = kCommon;
  argv.insert(argv.end(), args.begin(), args.end());
  argv.push_back("--out");
  argv.push_back(dir / name);
  const int code = run_fedra(argv, dir / (name + ".log"), std::chrono::seconds(180));
  INFO(read_file(dir / (name + ".log")));
  REQUIRE(code == 0);
  return read_jsonl(dir / (name + "/metrics.jsonl"));
}

// A line without what the wall clock measured (and without per-process byte counters).
nlohmann::json simulated(nlohmann::json line) {
  for (const char* k : {"wall_time_s", "worker_train_s_max", "eval_s", "elapsed_s", "peak_rss_bytes", "bytes_up",
                        "bytes_down"}) {
    line.erase(k);
  }
  for (auto it = line.begin(); it != line.end();) {
    it = it.key().rfind("bytes_", 0) == 0 ? line.erase(it) : std::next(it);
  }
  return line;
}

}  // namespace

TEST_CASE("fedbuff on the virtual clock: the same seed gives the same metrics with 2 or 3 worker processes") {
  TempDir dir;
  const std::vector<std::string> job = {"--strategy", "fedbuff", "--clients", "12", "--fleet",
                                        "lognormal:sigma=1.8,online=2,offline=1", "--clock", "virtual",
                                        "--fedbuff.updates", "15", "--fedbuff.buffer", "4",
                                        "--fedbuff.concurrency", "8", "--fedbuff.eval_every", "5"};
  auto args = job;
  args.insert(args.end(), {"--workers", "2"});
  const auto a = simulate(dir, "two", args);
  args = job;
  args.insert(args.end(), {"--workers", "3"});
  const auto b = simulate(dir, "three", args);
  REQUIRE(a.size() == 15);
  REQUIRE(b.size() == 15);
  for (size_t i = 0; i < a.size(); ++i) CHECK(simulated(a[i]) == simulated(b[i]));
  CHECK(a.back()["updates_applied"] == 60);
  CHECK(a.back()["test_accuracy"].get<double>() > 0.5);
  CHECK(a.back()["virtual_time_s"].get<double>() > 0);
}

TEST_CASE("fedasync: a worker process that dies mid-update loses only its own update") {
  TempDir dir;
  const auto lines = simulate(dir, "dies", {"--strategy", "fedasync", "--workers", "4", "--fleet",
                                            "lognormal:sigma=1", "--clock", "virtual", "--fedasync.updates", "20",
                                            "--fedasync.eval_every", "20", "--fedasync.testing.exit_after",
                                            "worker-2:3"});
  REQUIRE(lines.size() == 20);
  const auto& last = lines.back();
  CHECK(last["workers_failed"] == 1);
  CHECK(last["workers_ok"] == 3);
  CHECK(last["updates_lost"] == 1);
  CHECK(last["updates_applied"] == 20);
  const std::string log = read_file(dir / "dies.log");
  CHECK(contains(log, "worker-2 left"));
  CHECK(contains(log, "its update in flight is lost"));
}

TEST_CASE("fedbuff on the wall clock: stragglers sleep, churn loses updates, the run finishes") {
  TempDir dir;
  const auto lines = simulate(dir, "wall", {"--strategy", "fedbuff", "--workers", "2", "--clients", "6", "--fleet",
                                            "stragglers:fraction=0.3,slowdown=4,latency=0.01,online=1,offline=0.3",
                                            "--fedbuff.updates", "8", "--fedbuff.buffer", "2",
                                            "--fedbuff.eval_every", "8", "--fedbuff.update_timeout", "60"});
  REQUIRE(lines.size() == 8);
  CHECK(lines.back()["virtual_time_s"] == 0.0);
  CHECK(lines.back()["updates_applied"] == 16);
  CHECK(lines.back()["device_s"].get<double>() > 0);
}
