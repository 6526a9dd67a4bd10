// Step-driven strategies survive SIGKILL with real processes over loopback: a coordinator killed
// mid-run and resumed, a worker killed and restarted under its name, each ending with the weights
// of the uninterrupted run, bit for bit. (Every strategy's state and rollback is covered in one
// process by tests/unit/strategies/resume_test.cc; these check the files, the flags and the TCP
// path.)
#include "tests/testing.h"

#include <csignal>
#include <thread>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "core/model/model.h"
#include "tests/test_util.h"

using namespace fedra;
using namespace fedra::test;

namespace {

std::vector<std::string> with(std::vector<std::string> args, const std::vector<std::string>& extra) {
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

}  // namespace

TEST_CASE("gradsum: the coordinator SIGKILLed mid-run resumes to the uninterrupted run's weights, bit for bit") {
  TempDir dir;
  // Adam: its moments and step count must come back from the checkpoint too. Rounds of 40 steps.
  const std::vector<std::string> options = {
      "simulate", "--workers", "2", "--strategy", "gradsum", "--model", "mlp:784-64-10", "--dataset",
      "fmnist:limit=4000", "--test-data", "fmnist:test_limit=500", "--gradsum.steps", "400",
      "--gradsum.steps_per_round", "40", "--gradsum.optimizer", "adam", "--gradsum.lr", "0.001", "--threads", "1"};
  REQUIRE(run_fedra(with(options, {"--out", dir / "reference"}), dir / "reference.log", std::chrono::seconds(300)) == 0);

  const ChildProcess first = start_fedra(with(options, {"--out", dir / "run", "--checkpoint-every", "2"}),
                                         dir / "first.log");
  wait_for_lines(dir / "run/metrics.jsonl", 5, std::chrono::seconds(120));
  kill_child(first);
  const auto state = nlohmann::json::parse(read_file(dir / "run/checkpoint/state.json"));
  const int64_t checkpointed = state["round"].get<int64_t>();
  MESSAGE("killed after round " << checkpointed << " was checkpointed");
  CHECK(checkpointed % 2 == 0);  // --checkpoint-every 2
  CHECK(checkpointed >= 4);
  CHECK(checkpointed < 10);

  const int code = run_fedra(with(options, {"--resume", dir / "run", "--checkpoint-every", "2"}), dir / "resume.log",
                             std::chrono::seconds(300));
  INFO("resume log:\n" << read_file(dir / "resume.log"));
  REQUIRE(code == 0);
  CHECK(contains(read_file(dir / "resume.log"), fmt::format("resuming after round {} of 10 (step {} of 400)",
                                                            checkpointed, checkpointed * 40)));
  const auto lines = read_jsonl(dir / "run/metrics.jsonl");
  const auto reference = read_jsonl(dir / "reference/metrics.jsonl");
  REQUIRE(lines.size() == 10);
  for (size_t i = 0; i < lines.size(); ++i) {
    CHECK(lines[i]["round"] == static_cast<int64_t>(i + 1));
    CHECK(lines[i]["first_step"] == reference[i]["first_step"]);
    CHECK(lines[i]["train_loss"].get<double>() == reference[i]["train_loss"].get<double>());
  }
  CHECK(identical(load_model_file(dir / "run/model.bin"), load_model_file(dir / "reference/model.bin")));
  // Only the newest checkpoint is kept (--checkpoint-keep 1).
  std::vector<std::string> files;
  for (const auto& e : std::filesystem::directory_iterator(dir / "run/checkpoint")) files.push_back(e.path().filename());
  std::sort(files.begin(), files.end());
  CHECK(files == std::vector<std::string>{"round-10.bin", "state.json"});
}

TEST_CASE("split (U-shaped, momentum): a worker SIGKILLed and restarted under its name rejoins; same weights") {
  TempDir dir;
  // Rounds are epochs; both workers are needed for every round (min_workers 2), so the round
  // in which worker-1 dies is rolled back and run again when it is back (--round-retries).
  auto job = [&](const std::string& out, bool kill) {
    const std::string sub = dir / out;
    std::filesystem::create_directories(sub);
    const ChildProcess coordinator = start_fedra(
        {"coordinator", "--listen", "127.0.0.1:0", "--port-file", sub + "/port", "--min-workers", "2",
         "--strategy", "split", "--model", "mlp:784-64-32-10,cut=relu1", "--split.labels", "worker",
         "--split.epochs", "4", "--split.momentum", "0.9", "--split.lr", "0.05", "--split.min_workers", "2",
         "--test-data", "fmnist:test_limit=500", "--round-retries", "2", "--out", sub + "/out", "--threads", "1"},
        sub + "/coordinator.log");
    const std::string port = wait_for_file(sub + "/port", std::chrono::seconds(30));
    auto start_worker = [&](int i, const std::string& log) {
      // 12,000 images: a turn takes long enough (~0.2 s on an idle machine) that the kill below,
      // once worker-1's log shows a round-2 request, lands while that round is under way.
      return start_fedra({"worker", "--connect", "127.0.0.1:" + port, "--dataset", "fmnist:limit=12000", "--client",
                          std::to_string(i) + "/2", "--name", "worker-" + std::to_string(i), "--threads", "1",
                          "--log-level", "debug"},
                         sub + "/" + log);
    };
    std::vector<ChildProcess> workers;
    for (int i = 0; i < 2; ++i) workers.push_back(start_worker(i, "worker-" + std::to_string(i) + ".log"));
    std::optional<ChildProcess> again;
    if (kill) {
      // Into round 2: worker-1 has been handed its turn (or a step) of round 2.
      wait_for_text(sub + "/worker-1.log", "', round 2", std::chrono::seconds(300));
      kill_child(workers[1]);
      again.emplace(start_worker(1, "worker-1-again.log"));
    }
    const int code = finish(coordinator, std::chrono::seconds(300));
    const std::string log = read_file(sub + "/coordinator.log");
    INFO("coordinator log:\n" << log);
    CHECK(code == 0);
    if (kill) {
      CHECK(contains(log, "worker worker-1 left"));
      MESSAGE("the round was " << std::string(contains(log, "rolling it back") ? "rolled back and run again"
                                                                    : "not under way: worker-1 rejoined before its turn"));
    }
    CHECK(finish(workers[0], std::chrono::seconds(30)) == 0);
    if (again) CHECK(finish(*again, std::chrono::seconds(30)) == 0);
    else CHECK(finish(workers[1], std::chrono::seconds(30)) == 0);
    return sub + "/out";
  };
  const std::string reference = job("reference", false);
  const std::string killed = job("killed", true);
  const auto lines = read_jsonl(killed + "/metrics.jsonl");
  const auto want = read_jsonl(reference + "/metrics.jsonl");
  REQUIRE(lines.size() == 4);  // every round once
  for (size_t i = 0; i < lines.size(); ++i) {
    CHECK(lines[i]["round"] == static_cast<int64_t>(i + 1));
    CHECK(lines[i]["train_loss"].get<double>() == want[i]["train_loss"].get<double>());
  }
  CHECK(identical(load_model_file(killed + "/model.bin"), load_model_file(reference + "/model.bin")));
}
