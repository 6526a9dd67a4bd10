// End-to-end runs of the real binary: `fedra simulate` and a coordinator with workers started
// separately, as docs/running.md tells a user to do in three terminals.
#include "tests/testing.h"

#include <sys/mount.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "tests/test_util.h"
#include "transport/codec.h"

using namespace fedra;
using namespace fedra::test;

TEST_CASE("fedra simulate runs the default experiment's config and writes the documented files") {
  TempDir dir;
  // The shipped config, shrunk: fewer workers and rounds, a slice of the data.
  const int code = run_fedra({"simulate", "--config", std::string(FEDRA_SOURCE_DIR) + "/experiments/fedavg-fmnist.cfg",
                              "--workers", "3", "--dataset", "fmnist:limit=6000,test_limit=2000",
                              "--fedavg.rounds", "3", "--holdout", "0.1", "--fedavg.fed_eval_every", "3",
                              "--out", dir / "out"},
                             dir / "simulate.log", std::chrono::seconds(300));
  const std::string log = read_file(dir / "simulate.log");
  INFO("log:\n" << log);
  REQUIRE(code == 0);
  const auto lines = read_jsonl(dir / "out/metrics.jsonl");
  REQUIRE(lines.size() == 3);
  int64_t last_up = 0, last_rss = 0;
  for (size_t i = 0; i < lines.size(); ++i) {
    const auto& l = lines[i];
    CHECK(l["strategy"] == "fedavg");
    CHECK(l["round"] == static_cast<int64_t>(i + 1));
    CHECK(l["status"] == "ok");
    CHECK(l["workers_ok"] == 3);
    CHECK(l["test_accuracy"].get<double>() >= 0.0);
    CHECK(l["test_accuracy"].get<double>() <= 1.0);
    CHECK(l.contains("test_loss"));
    CHECK(l["bytes_up"].get<int64_t>() > last_up);
    CHECK(l["bytes_down"].get<int64_t>() > 0);
    CHECK(l["elapsed_s"].get<double>() > 0);
    // The coordinator's running peak RSS: a LibTorch process holding the test set is tens of MB.
    CHECK(l["peak_rss_bytes"].get<int64_t>() >= std::max<int64_t>(last_rss, 20'000'000));
    last_up = l["bytes_up"].get<int64_t>();
    last_rss = l["peak_rss_bytes"].get<int64_t>();
  }
  // Three 2NN models (199,210 float32 = 797 KB each) go up every round, plus framing.
  CHECK(lines[0]["bytes_up"].get<int64_t>() > 3 * 796840);
  CHECK(lines[2]["test_accuracy"].get<double>() > 0.75);
  // Federated evaluation after round 3 only, on the 10% each worker held out (200 of its 2,000).
  CHECK_FALSE(lines[1].contains("fed_eval_accuracy"));
  CHECK(lines[2]["fed_eval_workers_ok"] == 3);
  CHECK(lines[2]["fed_eval_examples"] == 600);
  CHECK(lines[2]["fed_eval_accuracy"].get<double>() > 0.6);
  CHECK(lines[2]["fed_eval_weights"].size() == 3);
  CHECK(lines[2]["fed_eval_class_accuracy"].size() == 10);
  CHECK(lines[2]["train_examples"] == 5400);  // the held-out images are not trained on
  const auto summary = nlohmann::json::parse(read_file(dir / "out/summary.json"));
  CHECK(summary["status"] == "completed");
  CHECK(summary["final"]["round"] == 3);
  CHECK(summary["peak_rss_bytes"].get<int64_t>() >= last_rss);
  CHECK(summary["config"]["model"] == "mlp:784-200-200-10");
  CHECK(summary["config"]["fedavg.rounds"] == "3");
  CHECK(summary["config"]["fedavg.local_epochs"] == "2");  // from the config file
  CHECK(summary["workers"].size() == 3);
  CHECK(std::filesystem::exists(dir / "out/logs/worker-2.log"));
  CHECK(contains(log, "round 3/3"));
}

TEST_CASE("a coordinator and two workers started by hand train together") {
  TempDir dir;
  const ChildProcess coordinator = start_fedra(
      {"coordinator", "--listen", "127.0.0.1:0", "--port-file", dir / "port", "--min-workers", "2",
       "--test-data", "fmnist:test_limit=1000", "--fedavg.rounds", "2", "--fedavg.local_steps", "50",
       "--out", dir / "out", "--threads", "1"},
      dir / "coordinator.log");
  const std::string port = wait_for_file(dir / "port", std::chrono::seconds(30));
  std::vector<ChildProcess> workers;
  for (int i = 0; i < 2; ++i) {
    std::vector<std::string> args = {"worker", "--connect", "127.0.0.1:" + port, "--dataset", "fmnist:limit=4000",
                                     "--client", std::to_string(i) + "/2", "--threads", "1"};
    if (i == 0) {
      args.push_back("--dump-frames");
      args.push_back(dir / "frames");
    }
    workers.push_back(start_fedra(args, dir / ("worker-" + std::to_string(i) + ".log")));
  }
  const int code = finish(coordinator, std::chrono::seconds(120));
  INFO("coordinator log:\n" << read_file(dir / "coordinator.log"));
  CHECK(code == 0);
  for (const auto& w : workers) CHECK(finish(w, std::chrono::seconds(30)) == 0);
  const auto lines = read_jsonl(dir / "out/metrics.jsonl");
  REQUIRE(lines.size() == 2);
  CHECK(lines[1]["test_accuracy"].get<double>() > 0.6);
  CHECK(contains(read_file(dir / "worker-0.log"), "coordinator ended the job: job completed"));

  // --dump-frames wrote every frame worker-0 exchanged: hello, welcome, 2 x (fit, result), shutdown.
  std::vector<std::string> frames;
  for (const auto& e : std::filesystem::directory_iterator(dir / "frames")) frames.push_back(e.path().string());
  std::sort(frames.begin(), frames.end());
  REQUIRE(frames.size() == 7);
  std::vector<std::string> kinds;
  for (const auto& f : frames) {
    const std::string bytes = read_file(f);
    const auto* data = reinterpret_cast<const std::byte*>(bytes.data());
    kinds.push_back(transport::decode(transport::InFrame::from_bytes(data, bytes.size(), {}), {}).kind);
  }
  CHECK(kinds == std::vector<std::string>{"hello", "welcome", "fedavg.fit", "fedavg.fit_result", "fedavg.fit",
                                          "fedavg.fit_result", "shutdown"});
  CHECK(contains(frames[0], "-sent-"));
  CHECK(contains(frames[1], "-recv-"));
}

namespace {

// Three workers started by hand; worker-2 is killed with SIGKILL during round 2 (once its log says
// it has round 2's request) and started again (same name, same data) right away. The job needs all
// three for a round to start (fedavg.min_workers 3), so round 3 waits for the restarted process,
// however long LibTorch and the data take to load on a busy machine. Returns the metrics lines.
std::vector<nlohmann::json> kill_and_rejoin(const TempDir& dir, int min_results) {
  const ChildProcess coordinator = start_fedra(
      {"coordinator", "--listen", "127.0.0.1:0", "--port-file", dir / "port", "--min-workers", "3",
       "--test-data", "fmnist:test_limit=500", "--fedavg.rounds", "4", "--fedavg.local_epochs", "100", "--fedavg.local_steps", "1200",
       "--fedavg.min_results", std::to_string(min_results), "--fedavg.min_workers", "3", "--out", dir / "out",
       "--threads", "1"},
      dir / "coordinator.log");
  const std::string port = wait_for_file(dir / "port", std::chrono::seconds(30));
  auto start_worker = [&](int i, const std::string& log) {
    return start_fedra({"worker", "--connect", "127.0.0.1:" + port, "--dataset", "fmnist:limit=3000", "--client",
                        std::to_string(i) + "/3", "--name", "worker-" + std::to_string(i), "--threads", "1",
                        "--log-level", "debug"},
                       dir / log);
  };
  std::vector<ChildProcess> workers;
  for (int i = 0; i < 3; ++i) workers.push_back(start_worker(i, "worker-" + std::to_string(i) + ".log"));
  // Its local training (1,200 steps) takes seconds: the kill lands while worker-2 trains.
  wait_for_text(dir / "worker-2.log", "'fedavg.fit', round 2", std::chrono::seconds(300));
  kill_child(workers[2]);
  const ChildProcess again = start_worker(2, "worker-2-again.log");
  const int code = finish(coordinator, std::chrono::seconds(300));
  INFO("coordinator log:\n" << read_file(dir / "coordinator.log"));
  CHECK(code == 0);
  CHECK(finish(workers[0], std::chrono::seconds(30)) == 0);
  CHECK(finish(workers[1], std::chrono::seconds(30)) == 0);
  CHECK(finish(again, std::chrono::seconds(30)) == 0);
  return read_jsonl(dir / "out/metrics.jsonl");
}

}  // namespace

TEST_CASE("a worker killed mid-round: the round completes with the others, and it rejoins a later round") {
  TempDir dir;
  const auto lines = kill_and_rejoin(dir, 2);
  REQUIRE(lines.size() == 4);  // no round lost, none repeated
  for (size_t i = 0; i < lines.size(); ++i) {
    CHECK(lines[i]["round"] == static_cast<int64_t>(i + 1));
    CHECK(lines[i]["status"] == "ok");
  }
  CHECK(lines[0]["workers_ok"] == 3);
  CHECK(lines[1]["workers_ok"] == 2);
  CHECK(lines[1]["workers_failed"] == 1);
  CHECK(lines[3]["workers_ok"] == 3);  // worker-2, restarted, is back
  CHECK(contains(read_file(dir / "coordinator.log"), "worker worker-2 failed"));
  CHECK(lines[3]["test_accuracy"].get<double>() > 0.7);
}

TEST_CASE("a worker killed mid-round with min_results unmet: the round fails with the reason, training goes on") {
  TempDir dir;
  const auto lines = kill_and_rejoin(dir, 3);
  REQUIRE(lines.size() == 4);
  CHECK(lines[0]["status"] == "ok");
  CHECK(lines[1]["status"] == "failed");
  const std::string reason = lines[1]["reason"].get<std::string>();
  INFO("reason: " << reason);
  CHECK(contains(reason, "round 2: 2 result(s) accepted, min_results is 3"));
  CHECK(contains(reason, "worker-2"));
  CHECK(lines[3]["status"] == "ok");
  CHECK(lines[3]["workers_ok"] == 3);
  CHECK(lines[3]["test_accuracy"].get<double>() > 0.7);
}

TEST_CASE("1,000 virtual clients in two processes, 10 sampled per round: coordinator memory stays O(model)") {
  auto run = [](int clients) {
    TempDir dir;
    const int code = run_fedra({"simulate", "--workers", "2", "--clients", std::to_string(clients), "--fedavg.fraction",
                                std::to_string(10.0 / clients), "--fedavg.rounds", "3", "--test-data",
                                "fmnist:test_limit=2000", "--out", dir / "out"},
                               dir / "simulate.log", std::chrono::seconds(300));
    INFO("log:\n" << read_file(dir / "simulate.log"));
    REQUIRE(code == 0);
    const auto summary = nlohmann::json::parse(read_file(dir / "out/summary.json"));
    CHECK(summary["workers"].size() == static_cast<size_t>(clients));  // every client connected on its own
    const auto lines = read_jsonl(dir / "out/metrics.jsonl");
    REQUIRE(lines.size() == 3);
    for (const auto& l : lines) {
      CHECK(l["workers_asked"] == 10);
      CHECK(l["workers_ok"] == 10);
    }
    CHECK(lines[2]["test_accuracy"].get<double>() > 0.4);
    return summary["peak_rss_bytes"].get<double>();
  };
  const double rss10 = run(10);
  const double rss1000 = run(1000);
  MESSAGE("coordinator peak RSS: 10 clients " << rss10 / 1e6 << " MB, 1000 clients " << rss1000 / 1e6 << " MB");
  CHECK(rss1000 < rss10 + 50e6);  // 990 more connections, label histograms and byte counters: well under 50 MB
}

TEST_CASE("a worker asked to host clients that do not exist is refused, naming them") {
  TempDir dir;
  const int code = run_fedra({"worker", "--client", "990/1000", "--virtual-clients", "20", "--connect-timeout", "1"},
                             dir / "worker.log", std::chrono::seconds(60));
  CHECK(code == 2);
  CHECK(contains(read_file(dir / "worker.log"), "clients 990..1009 do not exist (0..999)"));
}

TEST_CASE("a coordinator SIGKILLed mid-run resumes from its checkpoint: no round lost or repeated") {
  TempDir dir;
  // With a server optimiser, whose moments must come back from the checkpoint too.
  const std::vector<std::string> options = {"simulate", "--workers", "3", "--dataset", "fmnist:limit=3000",
                                            "--test-data", "fmnist:test_limit=1000", "--fedavg.rounds", "6",
                                            "--fedavg.local_epochs", "3", "--fedavg.server_opt", "adam"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = options;
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
  };
  REQUIRE(run_fedra(with({"--out", dir / "reference"}), dir / "reference.log", std::chrono::seconds(300)) == 0);

  const ChildProcess first = start_fedra(with({"--out", dir / "run"}), dir / "first.log");
  wait_for_lines(dir / "run/metrics.jsonl", 3, std::chrono::seconds(120));
  kill_child(first);  // SIGKILL: no summary, no goodbye; its workers see the connection drop
  const auto state = nlohmann::json::parse(read_file(dir / "run/checkpoint/state.json"));
  const int64_t checkpointed = state["round"].get<int64_t>();
  MESSAGE("killed after round " << checkpointed << " was checkpointed; metrics.jsonl had "
                                << read_jsonl(dir / "run/metrics.jsonl").size() << " lines");
  CHECK(checkpointed >= 2);
  CHECK(checkpointed < 6);

  const int code = run_fedra(with({"--resume", dir / "run"}), dir / "resume.log", std::chrono::seconds(300));
  INFO("resume log:\n" << read_file(dir / "resume.log"));
  REQUIRE(code == 0);
  CHECK(contains(read_file(dir / "resume.log"), fmt::format("checkpoint after round {}", checkpointed)));
  const auto lines = read_jsonl(dir / "run/metrics.jsonl");
  const auto reference = read_jsonl(dir / "reference/metrics.jsonl");
  REQUIRE(lines.size() == 6);
  for (size_t i = 0; i < lines.size(); ++i) CHECK(lines[i]["round"] == static_cast<int64_t>(i + 1));
  // Worker sampling and local seeds follow from the job seed and the round, so the resumed run
  // is the uninterrupted one, round for round.
  for (size_t i = 0; i < lines.size(); ++i) {
    CHECK(lines[i]["test_accuracy"].get<double>() == doctest::Approx(reference[i]["test_accuracy"].get<double>()).epsilon(0.01));
  }
  CHECK(nlohmann::json::parse(read_file(dir / "run/summary.json"))["status"] == "completed");
  CHECK(nlohmann::json::parse(read_file(dir / "run/checkpoint/state.json"))["round"] == 6);
  // Totals are of the whole job: they carry on from the checkpoint instead of restarting at 0.
  for (size_t i = 1; i < lines.size(); ++i) {
    CHECK(lines[i]["bytes_up"].get<int64_t>() > lines[i - 1]["bytes_up"].get<int64_t>());
    CHECK(lines[i]["elapsed_s"].get<double>() > lines[i - 1]["elapsed_s"].get<double>());
  }
  CHECK(nlohmann::json::parse(read_file(dir / "run/summary.json"))["bytes_up"].get<int64_t>() >=
        lines.back()["bytes_up"].get<int64_t>());
  // Resuming the completed run again is refused, and its record is kept.
  const std::string completed = read_file(dir / "run/summary.json");
  CHECK(run_fedra(with({"--resume", dir / "run"}), dir / "again.log", std::chrono::seconds(60)) == 2);
  CHECK(contains(read_file(dir / "again.log"), "completed with these options (its summary.json says so): there is "
                                               "nothing to resume"));
  CHECK(read_file(dir / "run/summary.json") == completed);
}

TEST_CASE("a full disk: the run stops naming the file and the reason, the last checkpoint stays whole, and it resumes") {
  TempDir dir;
  const std::string disk = dir / "disk";
  std::filesystem::create_directories(disk);
  // A 160 KiB file system: round 1's checkpoint (a 100 KB model) fits, round 2's does not.
  if (::mount("tmpfs", disk.c_str(), "tmpfs", 0, "size=160k") != 0) {
    MESSAGE("skipped: cannot mount a small tmpfs here (" << std::strerror(errno) << "); needs root");
    return;
  }
  struct Unmount {
    std::string path;
    ~Unmount() { ::umount2(path.c_str(), MNT_DETACH); }
  } unmount{disk};
  const std::vector<std::string> options = {"simulate", "--workers", "2", "--model", "mlp:784-32-10",
                                            "--dataset", "fmnist:limit=1000", "--test-data", "fmnist:test_limit=500",
                                            "--fedavg.rounds", "4", "--fedavg.local_steps", "5"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = options;
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
  };
  const std::string run = disk + "/run";
  CHECK(run_fedra(with({"--out", run}), dir / "full.log", std::chrono::seconds(120)) == 1);
  const std::string log = read_file(dir / "full.log");
  INFO(log);
  CHECK(contains(log, "the checkpoint of round 2 failed: cannot write '" + run + "/checkpoint/round-2.bin.tmp': "
                      "No space left on device; the checkpoint of round 1 is intact: make room, then continue "
                      "with --resume " + run));
  const auto state = nlohmann::json::parse(read_file(run + "/checkpoint/state.json"));
  CHECK(state["round"] == 1);
  CHECK(std::filesystem::file_size(run + "/checkpoint/round-1.bin") > 100000);
  std::vector<std::string> left;
  for (const auto& e : std::filesystem::directory_iterator(run + "/checkpoint")) left.push_back(e.path().filename());
  std::sort(left.begin(), left.end());
  CHECK(left == std::vector<std::string>{"round-1.bin", "state.json"});  // no half-written files
  CHECK(nlohmann::json::parse(read_file(run + "/summary.json"))["status"] == "failed");

  // "Make room": move the run to a roomy disk and continue it there.
  std::filesystem::copy(run, dir / "moved", std::filesystem::copy_options::recursive);
  REQUIRE(run_fedra(with({"--resume", dir / "moved"}), dir / "resume.log", std::chrono::seconds(120)) == 0);
  const auto lines = read_jsonl(dir / "moved/metrics.jsonl");
  REQUIRE(lines.size() == 4);
  for (size_t i = 0; i < lines.size(); ++i) CHECK(lines[i]["round"] == static_cast<int64_t>(i + 1));

  // An output directory that cannot be made is refused before anything starts.
  std::ofstream(dir / "a-file") << "x";
  CHECK(run_fedra(with({"--out", dir / "a-file/run"}), dir / "notdir.log", std::chrono::seconds(60)) == 2);
  CHECK(contains(read_file(dir / "notdir.log"), "cannot create output directory '" + (dir / "a-file/run") + "': Not a directory"));
}

TEST_CASE("--resume is refused clearly when there is no checkpoint") {
  TempDir dir;
  CHECK(run_fedra({"simulate", "--workers", "1", "--resume", dir / "nothing"}, dir / "a.log", std::chrono::seconds(60)) == 2);
  const std::string said = read_file(dir / "a.log");
  CHECK(contains(said, "nothing to resume in " + (dir / "nothing") + ": it holds no checkpoint (" + (dir / "nothing") +
                           "/checkpoint/state.json is missing"));
  CHECK(contains(said, "Start the run afresh: the same command without --resume, with --out " + (dir / "nothing")));
}

TEST_CASE("a worker stopped past its rounds' deadlines skips the expired requests instead of redoing them") {
  TempDir dir;
  // Rounds of 1 s at most: while worker-1 is stopped (SIGSTOP) for three rounds, its requests
  // expire and the coordinator says so; after SIGCONT it skips those and serves the next round.
  const ChildProcess coordinator = start_fedra(
      {"coordinator", "--listen", "127.0.0.1:0", "--port-file", dir / "port", "--min-workers", "2",
       "--test-data", "none", "--fedavg.rounds", "12", "--fedavg.local_steps", "20", "--fedavg.round_timeout", "1",
       "--out", dir / "out", "--threads", "1"},
      dir / "coordinator.log");
  const std::string port = wait_for_file(dir / "port", std::chrono::seconds(30));
  std::vector<ChildProcess> workers;
  for (int i = 0; i < 2; ++i) {
    workers.push_back(start_fedra({"worker", "--connect", "127.0.0.1:" + port, "--dataset", "fmnist:limit=2000",
                                   "--client", std::to_string(i) + "/2", "--name", "worker-" + std::to_string(i),
                                   "--threads", "1"},
                                  dir / ("worker-" + std::to_string(i) + ".log")));
  }
  wait_for_lines(dir / "out/metrics.jsonl", 1, std::chrono::seconds(120));
  ::kill(workers[1].pid, SIGSTOP);
  // Three more rounds recorded while it is stopped: at least two of its requests expired unread.
  wait_for_lines(dir / "out/metrics.jsonl", 4, std::chrono::seconds(120));
  ::kill(workers[1].pid, SIGCONT);
  const int code = finish(coordinator, std::chrono::seconds(120));
  const std::string log = read_file(dir / "worker-1.log");
  INFO("worker-1 log:\n" << log);
  CHECK(code == 0);
  CHECK(finish(workers[0], std::chrono::seconds(30)) == 0);
  CHECK(finish(workers[1], std::chrono::seconds(30)) == 0);
  CHECK(contains(log, "skipping request"));
  CHECK(contains(log, "the coordinator gave up on it before this worker got to it"));
  const auto lines = read_jsonl(dir / "out/metrics.jsonl");
  REQUIRE(lines.size() == 12);
  CHECK(lines.back()["workers_ok"] == 2);  // back in the last round
}

TEST_CASE("a fresh run refuses a directory holding a checkpoint: a forgotten --resume does not cost it") {
  TempDir dir;
  std::filesystem::create_directories(dir / "out/checkpoint");
  std::ofstream(dir / "out/checkpoint/state.json") << "{}\n";
  CHECK(run_fedra({"simulate", "--workers", "1", "--out", dir / "out"}, dir / "a.log", std::chrono::seconds(60)) == 2);
  CHECK(contains(read_file(dir / "a.log"), (dir / "out") + " holds the checkpoint of an earlier run"));
  CHECK(contains(read_file(dir / "a.log"), "continue it with --resume " + (dir / "out")));
  CHECK(read_file(dir / "out/checkpoint/state.json") == "{}\n");  // untouched
}

TEST_CASE("simulate whose workers all exit at once fails at once, with a worker's reason, not at --wait-timeout") {
  TempDir dir;
  // Each worker fails to load its data and exits 1. If simulate waited out its 600 s deadline,
  // run_fedra would kill it at 120 s and return -1.
  const int code = run_fedra({"simulate", "--workers", "2", "--dataset", "csv:train=/nope/a.csv", "--test-data",
                              "none", "--wait-timeout", "600", "--fedavg.rounds", "1", "--out", dir / "out"},
                             dir / "a.log", std::chrono::seconds(120));
  const std::string log = read_file(dir / "a.log");
  INFO(log);
  CHECK(code == 1);
  CHECK(contains(log, "all 2 worker processes exited before the job ended; worker-0 exited with code 1"));
  CHECK(contains(log, "/nope/a.csv"));
  CHECK(nlohmann::json::parse(read_file(dir / "out/summary.json"))["status"] == "failed");
}

TEST_CASE("a coordinator without enough workers gives up at its deadline with the reason") {
  TempDir dir;
  const int code = run_fedra({"coordinator", "--listen", "127.0.0.1:0", "--min-workers", "2",
                              "--wait-timeout", "1", "--test-data", "none", "--out", dir / "out"},
                             dir / "coordinator.log", std::chrono::seconds(60));
  CHECK(code == 1);
  CHECK(contains(read_file(dir / "coordinator.log"), "only 0 of 2 workers connected within 1 s"));
  const auto summary = nlohmann::json::parse(read_file(dir / "out/summary.json"));
  CHECK(summary["status"] == "failed");
}

TEST_CASE("bad options are refused before anything starts, naming the option") {
  TempDir dir;
  CHECK(run_fedra({"simulate", "--fedavg.rounds", "zero"}, dir / "a.log", std::chrono::seconds(60)) == 2);
  CHECK(contains(read_file(dir / "a.log"), "option fedavg.rounds: 'zero' is not an integer"));
  CHECK(run_fedra({"simulate", "--strategy", "fedsgd"}, dir / "b.log", std::chrono::seconds(60)) == 2);
  CHECK(contains(read_file(dir / "b.log"), "unknown strategy 'fedsgd'"));
  CHECK(run_fedra({"coordinator", "--bogus"}, dir / "c.log", std::chrono::seconds(60)) == 2);
  CHECK(contains(read_file(dir / "c.log"), "unrecognised option '--bogus'"));
  CHECK(run_fedra({"simulate", "--config", dir / "missing.cfg"}, dir / "d.log", std::chrono::seconds(60)) == 2);
  CHECK(contains(read_file(dir / "d.log"), "config file '" + (dir / "missing.cfg") + "' not found"));
  CHECK(run_fedra({"worker", "--client", "3"}, dir / "e.log", std::chrono::seconds(60)) == 2);
  CHECK(contains(read_file(dir / "e.log"), "--client '3' is not I/N"));
  CHECK(run_fedra({"simulate", "--model", "mlp:784-x"}, dir / "f.log", std::chrono::seconds(60)) == 2);
  CHECK(contains(read_file(dir / "f.log"), "'x' is not a positive layer width"));
}

TEST_CASE("Ctrl-C stops a simulation at once and loses nothing already recorded") {
  TempDir dir;
  const ChildProcess sim = start_fedra({"simulate", "--workers", "3", "--dataset", "fmnist:limit=3000,test_limit=500",
                                        "--fedavg.rounds", "500", "--out", dir / "out"},
                                       dir / "simulate.log");
  // Interrupt once two rounds are on disk.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (read_jsonl(dir / "out/metrics.jsonl").size() < 2 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ::kill(sim.pid, SIGINT);
  const int code = finish(sim, std::chrono::seconds(60));
  INFO("log:\n" << read_file(dir / "simulate.log"));
  CHECK(code == 130);
  const auto lines = read_jsonl(dir / "out/metrics.jsonl");
  CHECK(lines.size() >= 2);
  for (size_t i = 0; i < lines.size(); ++i) CHECK(lines[i]["round"] == static_cast<int64_t>(i + 1));
  const auto summary = nlohmann::json::parse(read_file(dir / "out/summary.json"));
  CHECK(summary["status"] == "interrupted");
  CHECK(summary["rounds_recorded"] == lines.size());
  for (int i = 0; i < 3; ++i) {
    CHECK(contains(read_file(dir / ("out/logs/worker-" + std::to_string(i) + ".log")), "coordinator ended the job"));
  }
  CHECK_FALSE(contains(read_file(dir / "simulate.log"), "exited with code"));
}

TEST_CASE("2 of 10 workers Byzantine (sign flip x10): FedAvg's mean collapses, median and trimmed mean hold") {
  TempDir dir;
  auto final_accuracy = [&](const std::string& name, std::vector<std::string> extra) {
    // Ten virtual clients in two processes (clients 0-4 and 5-9): the same training as ten
    // processes, without starting and loading ten.
    std::vector<std::string> args = {"simulate", "--workers", "2", "--clients", "10", "--dataset",
                                     "fmnist:limit=20000,test_limit=2000", "--threads", "1", "--fedavg.rounds", "3",
                                     "--out", dir / name};
    if (name != "clean") {
      for (const char* a : {"--fedavg.testing.byzantine", "worker-3,worker-7", "--fedavg.testing.attack_scale",
                            "10"})
        args.emplace_back(a);
    }
    args.insert(args.end(), extra.begin(), extra.end());
    const int code = run_fedra(args, dir / (name + ".log"), std::chrono::seconds(180));
    INFO(read_file(dir / (name + ".log")));
    REQUIRE(code == 0);
    const auto lines = read_jsonl(dir / (name + "/metrics.jsonl"));
    REQUIRE(lines.size() == 3);
    return lines.back()["test_accuracy"].get<double>();
  };
  const double clean = final_accuracy("clean", {});
  const double mean = final_accuracy("mean", {});
  const double median = final_accuracy("median", {"--fedavg.aggregate", "median"});
  const double trimmed = final_accuracy("trimmed", {"--fedavg.aggregate", "trimmed_mean", "--fedavg.trim_beta", "0.2"});
  const double krum = final_accuracy("krum", {"--fedavg.aggregate", "krum", "--fedavg.krum_f", "2"});
  MESSAGE("final test accuracy: clean " << clean << ", attacked: mean " << mean << ", median " << median
                                        << ", trimmed_mean " << trimmed << ", krum " << krum);
  CHECK(clean > 0.75);
  CHECK(mean < 0.3);  // the flipped updates outweigh the honest ones
  CHECK(median > clean - 0.03);
  CHECK(trimmed > clean - 0.03);
  // Krum keeps one worker's model per round: clear of the attack, but a single worker's model is
  // noisier than a mean of ten (docs/benchmarks.md has the figures on the full budget).
  CHECK(krum > 0.7);
}
