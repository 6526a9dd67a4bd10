// Bad input against a running coordinator: real `fedra coordinator` and `fedra worker` processes
// and a rogue peer (tests/tools/rogue_worker.cc) over loopback TCP. In every case the coordinator
// names the problem, keeps serving the good workers, and the job completes.
#include "tests/testing.h"

#include <algorithm>
#include <chrono>

#include <fmt/format.h>

#include "tests/test_util.h"

using namespace fedra;
using namespace fedra::test;

namespace {

constexpr const char* kToken = "integration-token";

struct Scenario {
  const char* rogue_mode;           // rogue_worker mode, or "" for none
  bool rogue_joins_round;           // passes the handshake and is asked to fit in round 1
  std::vector<std::string> coordinator_extra;
  std::vector<std::string> coordinator_says;  // each expected in the coordinator's log
  const char* rogue_hears;          // expected in the rogue's output ("" if nothing to hear)
};

struct Outcome {
  int coordinator_code = -1;
  std::vector<int> worker_codes;
  std::string coordinator_log;
  std::string rogue_log;
  std::vector<nlohmann::json> metrics;
};

std::vector<std::string> good_worker_args(const std::string& port, int i) {
  return {"worker", "--connect", "127.0.0.1:" + port, "--name", "good-" + std::to_string(i),
          "--token", kToken, "--dataset", "fmnist:limit=1200", "--client", std::to_string(i) + "/2",
          "--threads", "1", "--connect-timeout", "20"};
}

// Starts a coordinator (2 rounds of FedAvg on a small model), the rogue and two good workers.
// `extra_stays`: the extra worker is one of the workers the job waits for.
Outcome run_scenario(const Scenario& s, const std::vector<std::string>& extra_worker = {}, bool extra_stays = true) {
  TempDir dir;
  const int expected_workers = 2 + (s.rogue_joins_round ? 1 : 0) + (extra_worker.empty() || !extra_stays ? 0 : 1);
  std::vector<std::string> args = {
      "coordinator", "--listen", "127.0.0.1:0", "--port-file", dir / "port",
      "--min-workers", std::to_string(expected_workers), "--wait-timeout", "60",
      "--token", kToken, "--model", "mlp:784-32-10", "--test-data", "fmnist:test_limit=1000",
      "--out", dir / "out", "--threads", "1", "--fedavg.rounds", "2",
      "--fedavg.local_steps", "20", "--fedavg.round_timeout", "30", "--fedavg.lr", "0.05"};
  args.insert(args.end(), s.coordinator_extra.begin(), s.coordinator_extra.end());
  const ChildProcess coordinator = start_fedra(args, dir / "coordinator.log");
  const std::string port = wait_for_file(dir / "port", std::chrono::seconds(30));

  Outcome out;
  std::vector<ChildProcess> workers;
  ChildProcess rogue;
  if (*s.rogue_mode != '\0') {
    rogue = spawn({FEDRA_ROGUE_BINARY, s.rogue_mode, "127.0.0.1:" + port, kToken}, dir / "rogue.log");
    if (!s.rogue_joins_round) {
      // Let the rejection happen while the coordinator waits for workers; it must go on serving.
      CHECK(finish(rogue, std::chrono::seconds(30)) == 0);
    }
  }
  for (int i = 0; i < 2; ++i) workers.push_back(start_fedra(good_worker_args(port, i), dir / ("good-" + std::to_string(i) + ".log")));
  if (!extra_worker.empty()) {
    std::vector<std::string> a = {"worker", "--connect", "127.0.0.1:" + port, "--token", kToken, "--threads", "1"};
    a.insert(a.end(), extra_worker.begin(), extra_worker.end());
    workers.push_back(start_fedra(a, dir / "extra.log"));
  }
  out.coordinator_code = finish(coordinator, std::chrono::seconds(180));
  for (const auto& w : workers) out.worker_codes.push_back(finish(w, std::chrono::seconds(30)));
  if (*s.rogue_mode != '\0' && s.rogue_joins_round) CHECK(finish(rogue, std::chrono::seconds(30)) == 0);
  out.coordinator_log = read_file(dir / "coordinator.log");
  out.rogue_log = read_file(dir / "rogue.log");
  out.metrics = read_jsonl(dir / "out/metrics.jsonl");
  return out;
}

void check_job_completed(const Outcome& o) {
  INFO("coordinator log:\n" << o.coordinator_log);
  CHECK(o.coordinator_code == 0);
  REQUIRE(o.metrics.size() == 2);
  for (const auto& line : o.metrics) {
    CHECK(line["status"] == "ok");
    CHECK(line["test_accuracy"].get<double>() > 0.3);  // the model did train
  }
}

void check_scenario(const Scenario& s) {
  const Outcome o = run_scenario(s);
  check_job_completed(o);
  CHECK(o.worker_codes == std::vector<int>{0, 0});
  INFO("coordinator log:\n" << o.coordinator_log << "\nrogue log:\n" << o.rogue_log);
  for (const auto& phrase : s.coordinator_says) CHECK(contains(o.coordinator_log, phrase));
  if (*s.rogue_hears != '\0') CHECK(contains(o.rogue_log, s.rogue_hears));
  if (s.rogue_joins_round) {
    CHECK(o.metrics[0]["workers_asked"] == 3);
    CHECK(o.metrics[0]["workers_ok"] == 2);
    CHECK(o.metrics[0]["workers_failed"] == 1);
  } else {
    CHECK(o.metrics[0]["workers_failed"] == 0);
  }
}

}  // namespace

TEST_CASE("random bytes instead of a hello: refused with the reason, the job goes on") {
  check_scenario({"random-bytes", false, {},
                  {"rejected connection from 127.0.0.1",
                   "segments, the limit is 500 (is the peer speaking the Fedra protocol?)"},
                  "coordinator said: malformed frame: header announces"});
}

TEST_CASE("a truncated hello: the coordinator logs the truncation and serves the others") {
  check_scenario({"truncated", false, {}, {"closed the connection mid-frame (truncated frame:"}, ""});
}

TEST_CASE("a frame over the size cap: refused from its header, the limit named") {
  check_scenario({"oversize", false, {"--max-frame-bytes", "1048576"},
                  {"exceeds the frame limit of 1048576 bytes"}, "exceeds the frame limit of 1048576 bytes"});
}

TEST_CASE("a wrong protocol version: refused naming both versions") {
  check_scenario({"bad-version", false, {},
                  {"protocol version mismatch: the worker speaks protocol 99, this coordinator speaks protocol 2"},
                  "coordinator said: protocol version mismatch"});
}

TEST_CASE("a wrong token: refused, and the intruder never sees the job") {
  check_scenario({"bad-token", false, {}, {"authentication failed"}, "coordinator said: authentication failed"});
}

TEST_CASE("a tensor whose bytes do not match dtype x shape: that result fails, the round completes") {
  check_scenario({"bad-tensor", true, {},
                  {"tensor 'fc1.weight' in message 'fedavg.fit_result' has 12 bytes but float32[2,2] needs 16"},
                  "answering with a malformed tensor"});
}

TEST_CASE("a partial reply to a request that takes one: that request fails, and the worker is told why") {
  const char* said = "worker rogue sent a partial 'fedavg.fit_result' to a request that takes one reply";
  check_scenario({"partial-reply", true, {}, {said}, said});
}

TEST_CASE("a worker that disconnects mid-round: reported as lost, the round completes without it") {
  check_scenario({"disconnect-mid-round", true, {}, {"worker rogue lost mid-request", "worker rogue failed (disconnected)"},
                  "disconnecting"});
}

TEST_CASE("a worker whose data does not fit the model: one line at both ends, before any round; the job goes on") {
  const Outcome o = run_scenario({"", false, {}, {}, ""},
                                 {"--name", "misfit", "--dataset", "synthetic:n=64,features=16,classes=10"}, false);
  check_job_completed(o);
  INFO("coordinator log:\n" << o.coordinator_log);
  CHECK(contains(o.coordinator_log, "worker misfit reported: worker misfit hangs up: model 'mlp:784-32-10' cannot take misfit's data "
                                    "('synthetic:n=64,features=16,classes=10'): one example is float32[1,16] (mat1 "
                                    "and mat2 shapes cannot be multiplied"));
  CHECK(contains(o.coordinator_log, "change --model, or --dataset"));
  CHECK(!contains(o.coordinator_log, "Exception raised from"));  // no LibTorch backtrace
  CHECK(o.worker_codes == std::vector<int>{0, 0, 2});  // the misfit stops at once, a configuration error
}

TEST_CASE("a number out of its option's range ends the program at once, naming the option") {
  // The in-process table (tests/unit/apps/options_table_test.cc) covers every option; here, the
  // real program: exit 2, one line, and no waiting (a wrapped --min-workers waited for 2^64 workers).
  TempDir dir;
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"coordinator", "--min-workers", "-1"},
       "fedra coordinator: --min-workers must be an integer in [1, 1000000], got -1"},
      {{"coordinator", "--wait-timeout", "inf"},
       "fedra coordinator: --wait-timeout must be a finite number in (0, 1000000000] seconds, got inf"},
      {{"coordinator", "--fedavg.lr", "1e300"},
       "fedra coordinator: option fedavg.lr: '1e300' is beyond float32's range"},
      {{"simulate", "--fedavg.local_epochs", "0", "--fedavg.local_steps", "0"},
       "fedra simulate: fedavg.local_epochs 0 and fedavg.local_steps 0 train nothing"},
      {{"worker", "--partition", "dirichlet:alpha=-1"},
       "fedra worker: --partition dirichlet:alpha=-1: dirichlet alpha"}};
  int i = 0;
  for (const auto& [args, words] : cases) {
    const std::string log = dir / fmt::format("case-{}.log", i++);
    const auto t0 = std::chrono::steady_clock::now();
    const int code = run_fedra(args, log, std::chrono::seconds(60));
    const std::string said = read_file(log);
    INFO(args[0], " ", args[1], ": ", said);
    CHECK(code == 2);
    CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5));  // loaded machines: not 1 s
    CHECK(said.rfind(words, 0) == 0);
    CHECK(std::count(said.begin(), said.end(), '\n') == 1);
  }
}
