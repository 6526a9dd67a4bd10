// tensor and pipeline end to end: real coordinator and worker processes over loopback TCP,
// checked against the same training in one process.
#include "tests/testing.h"

#include <cmath>
#include <fstream>
#include <map>
#include <sstream>

#include <torch/torch.h>

#include "core/data/batching.h"
#include "core/data/dataset.h"
#include "core/model/model.h"
#include "core/training/training.h"
#include "tests/test_util.h"

using namespace fedra;
using namespace fedra::test;

namespace {

constexpr uint64_t kSeed = 5;
constexpr int64_t kBatch = 16;

struct Setup {
  std::string data, model, loss;
};

// One process, one model: batches=sequential from the whole training set, SGD with momentum.
// Returns the final parameters and every step's loss.
std::pair<NamedTensors, std::vector<double>> train_plain(const Setup& s, int64_t steps, double lr, double momentum) {
  Dataset all = load_dataset(s.data, Splits::kTrain).train;
  torch::nn::Sequential model = build_model(s.model, kSeed);
  torch::optim::SGD opt(model->parameters(), torch::optim::SGDOptions(lr).momentum(momentum));
  std::vector<double> losses;
  for (int64_t k = 0; k < steps; ++k) {
    const auto [b, e] = batch_rows("sequential", k, 0, kBatch, all.size());
    opt.zero_grad();
    at::Tensor loss = compute_loss(model->forward(all.inputs.narrow(0, b, e - b)), all.targets.narrow(0, b, e - b), s.loss);
    loss.backward();
    opt.step();
    losses.push_back(loss.item<double>());
  }
  NamedTensors out;
  for (auto& [n, t] : model_state(*model)) out.emplace_back(n, t.clone());
  return {out, losses};
}

struct Run {
  NamedTensors model;
  std::vector<double> losses;  // losses.csv, every step
  std::vector<nlohmann::json> metrics;
  std::string log;
};

std::vector<double> read_losses(const std::string& path) {
  std::ifstream f(path);
  std::string line;
  std::getline(f, line);
  CHECK(line == "round,step,loss,examples");
  std::vector<double> out;
  while (std::getline(f, line)) {
    std::vector<std::string> cells;
    std::stringstream ss(line);
    for (std::string c; std::getline(ss, c, ',');) cells.push_back(c);
    REQUIRE(cells.size() == 4);
    CHECK(std::stoll(cells[1]) == static_cast<int64_t>(out.size()));
    out.push_back(cells[2].empty() ? std::nan("") : std::stod(cells[2]));
  }
  return out;
}

Run run_simulate(const TempDir& dir, const std::string& name, const Setup& s, const std::string& strategy,
                 int64_t workers, std::vector<std::string> extra) {
  const std::string out = dir / name;
  std::vector<std::string> args = {"simulate", "--strategy", strategy, "--workers", std::to_string(workers),
                                   "--dataset", s.data, "--partition", "full", "--model", s.model, "--loss", s.loss,
                                   "--seed", std::to_string(kSeed), "--out", out,
                                   "--" + strategy + ".batch_size", std::to_string(kBatch),
                                   "--" + strategy + ".batches", "sequential"};
  args.insert(args.end(), extra.begin(), extra.end());
  const int code = run_fedra(args, dir / (name + ".log"), std::chrono::seconds(180));
  Run r;
  r.log = read_file(dir / (name + ".log"));
  INFO("log:\n" << r.log);
  REQUIRE(code == 0);
  r.model = load_model_file(out + "/model.bin");
  r.losses = read_losses(out + "/losses.csv");
  r.metrics = read_jsonl(out + "/metrics.jsonl");
  return r;
}

void check_equal_training(const Run& run, const std::pair<NamedTensors, std::vector<double>>& plain,
                          const Setup& s) {
  REQUIRE(run.losses.size() == plain.second.size());
  for (size_t k = 0; k < run.losses.size(); ++k) {
    INFO("step " << k);
    CHECK(std::abs(run.losses[k] - plain.second[k]) < 1e-5);  // the forward pass
  }
  CHECK(max_diff(run.model, plain.first) < 2e-6);  // the backward pass and the steps
  // ... and training moved the weights: a run that did nothing would not pass.
  CHECK(max_diff(run.model, model_state(*build_model(s.model, kSeed))) > 1e-3);
}

}  // namespace

TEST_CASE("tensor parallelism computes the single model's forward, backward and steps") {
  TempDir dir;
  struct Case {
    Setup setup;
    int64_t workers;
    const char* what;
  };
  const std::vector<Case> cases = {
      // four layers: column, row, column, row; the backward all-reduces fc3's input gradient
      {{"synthetic:n=128,features=16,classes=2,seed=3", "mlp:16-8-6-4-1", "bce"}, 2, "2 workers, 4 layers"},
      // three layers: the last is a column layer, its output slices gathered; uneven slices
      // (fc1's 10 rows as 3,3,2,2; fc3's 6 outputs as 2,2,1,1)
      {{"synthetic:n=128,features=20,classes=6,seed=3", "mlp:20-10-12-6", "ce"}, 4, "4 workers, 3 layers"},
      // 3 workers: over direct links each rank's neighbours are both others (parts go straight to
      // them; with 4, round the ring)
      {{"synthetic:n=128,features=20,classes=6,seed=3", "mlp:20-10-12-6", "ce"}, 3, "3 workers, 3 layers"},
      {{"synthetic:n=128,features=16,classes=2,seed=3", "mlp:16-8-1", "bce"}, 4, "4 workers, the notebook's MLP"},
  };
  for (const auto& c : cases) {
    INFO(c.what);
    const int64_t steps = 7;
    const auto plain = train_plain(c.setup, steps, 0.2, 0.9);
    // Rounds of 3 steps: the slices and each rank's momentum go back to the coordinator and out
    // again. The collectives through the coordinator (star) and round the workers' ring.
    std::map<std::string, Run> runs;
    for (const std::string topology : {"star", "ring"}) {
      INFO(topology);
      const Run run = run_simulate(dir, "tensor-" + topology + std::to_string(c.workers) + c.setup.model, c.setup,
                                   "tensor", c.workers,
                                   {"--tensor.workers", std::to_string(c.workers), "--tensor.steps", std::to_string(steps),
                                    "--tensor.steps_per_round", "3", "--tensor.lr", "0.2", "--tensor.momentum", "0.9",
                                    "--tensor.topology", topology});
      check_equal_training(run, plain, c.setup);
      REQUIRE(run.metrics.size() == 3);
      CHECK(run.metrics[0]["workers_ok"] == c.workers);
      CHECK(run.metrics[0]["topology"] == topology);
      runs.emplace(topology, run);
    }
    // Both sum the partial sums in rank order: the same bits.
    CHECK(max_diff(runs.at("ring").model, runs.at("star").model) == 0.0);
    CHECK(runs.at("ring").losses == runs.at("star").losses);
  }
}

TEST_CASE("the pipeline with one micro-batch in flight and weight stashing is plain training") {
  TempDir dir;
  const Setup s{"synthetic:n=128,features=16,classes=2,seed=3", "mlp:16-12-8-6-1", "bce"};
  const int64_t steps = 9;
  const auto plain = train_plain(s, steps, 0.2, 0.9);
  const auto pipeline = [&](int64_t stages, const std::string& topology) {
    return run_simulate(dir, "pipe-" + topology + std::to_string(stages), s, "pipeline", stages,
                        {"--pipeline.stages", std::to_string(stages), "--pipeline.in_flight", "1",
                         "--pipeline.stash", "true", "--pipeline.steps", std::to_string(steps),
                         "--pipeline.steps_per_round", "4", "--pipeline.lr", "0.2", "--pipeline.momentum", "0.9",
                         "--pipeline.topology", topology});
  };
  for (int64_t stages : {2, 3, 4}) {
    INFO(stages << " stages");
    // auto: stage s links to stage s + 1 (every worker of simulate has a peer port).
    const Run run = pipeline(stages, "auto");
    check_equal_training(run, plain, s);
    REQUIRE(run.metrics.size() == 3);
    CHECK(run.metrics[0]["topology"] == "chain");
    CHECK(run.metrics[0]["messages_relayed"] == 0);
    // Each micro-batch's activations (16 x width floats) up and gradient down every cut.
    CHECK(run.metrics[0]["peer_bytes"].get<double>() > 4 * 2 * 16 * 4 * (stages - 1));
    if (stages == 3) {  // through the coordinator: the same training, to the bit
      const Run star = pipeline(stages, "star");
      CHECK(star.metrics[0]["topology"] == "star");
      CHECK(star.metrics[0]["messages_relayed"] == 2 * 4 * (stages - 1));  // each micro-batch: up and down every cut
      CHECK(max_diff(star.model, run.model) == 0.0);
      CHECK(star.losses == run.losses);
    }
  }

  SUBCASE("micro-batches in flight see stale weights; stashing changes the gradient") {
    // The same job with 3 micro-batches in flight over 3 stages, with and without stashing:
    // neither is plain training, and they differ from each other.
    const auto in_flight = [&](const std::string& stash) {
      return run_simulate(dir, "pipe-3-" + stash, s, "pipeline", 3,
                          {"--pipeline.stages", "3", "--pipeline.in_flight", "3", "--pipeline.stash", stash,
                           "--pipeline.steps", std::to_string(steps), "--pipeline.lr", "0.2", "--pipeline.momentum", "0.9"});
    };
    const Run stashed = in_flight("true"), unstashed = in_flight("false");
    // The first micro-batch's forward sees the initial weights either way.
    CHECK(std::abs(stashed.losses[0] - plain.second[0]) < 1e-5);
    CHECK(max_diff(stashed.model, plain.first) > 1e-4);
    CHECK(max_diff(unstashed.model, plain.first) > 1e-4);
    CHECK(max_diff(stashed.model, unstashed.model) > 1e-5);
  }
}

TEST_CASE("over direct links the coordinator's traffic is control-sized; the links work under mutual TLS") {
  TempDir dir;
  // 2 workers, MLP 20-64-64-6, batch 16, rounds of 30 steps. Per step the star moves, per worker,
  // tensor's two 16 x 64 partial sums (forward and backward) or pipeline's 16 x 64 activations and
  // their gradient through the coordinator, up and down.
  const Setup s{"synthetic:n=256,features=20,classes=6,seed=3", "mlp:20-64-64-6", "ce"};
  const double model_bytes = (20 * 64 + 64 + 64 * 64 + 64 + 64 * 6 + 6) * 4;
  const double per_step = 16 * 64 * 4;
  for (const std::string strategy : {"tensor", "pipeline"}) {
    INFO(strategy);
    const std::string direct = strategy == "tensor" ? "ring" : "chain";
    const auto job = [&](const std::string& topology, std::vector<std::string> extra) {
      std::vector<std::string> args = {"--" + strategy + ".steps", "60", "--" + strategy + ".steps_per_round", "30",
                                       "--" + strategy + ".topology", topology};
      args.insert(args.end(), extra.begin(), extra.end());
      return run_simulate(dir, strategy + "-bytes-" + topology + (extra.empty() ? "" : "-tls"), s, strategy, 2, args);
    };
    const Run star = job("star", {});
    const Run linked = job(direct, {});
    const Run tls = job(direct, {"--tls"});
    REQUIRE(star.metrics.size() == 2);
    REQUIRE(linked.metrics.size() == 2);
    REQUIRE(tls.metrics.size() == 2);
    for (size_t i = 0; i < 2; ++i) {
      INFO("round " << i + 1);
      for (const char* w : {"worker-0", "worker-1"}) {
        INFO(w);
        const std::string up = std::string("bytes_up.") + w, down = std::string("bytes_down.") + w;
        CHECK(star.metrics[i][up].get<double>() > 30 * per_step);
        // Direct links: the part and its momentum down in the run request, back up in the reply
        // (with the losses and a heartbeat now and then); nothing per step.
        CHECK(linked.metrics[i][up].get<double>() < 2 * model_bytes + 4096);
        CHECK(linked.metrics[i][down].get<double>() < 2 * model_bytes + 4096);
      }
      // ...while the workers moved the per-step tensors among themselves.
      CHECK(linked.metrics[i]["peer_bytes"].get<double>() > 2 * 30 * per_step);
      CHECK(linked.metrics[i]["topology"] == direct);
      CHECK(tls.metrics[i]["topology"] == direct);
    }
    // The same training whichever way the tensors travel, TLS or not.
    CHECK(max_diff(linked.model, star.model) == 0.0);
    CHECK(max_diff(tls.model, star.model) == 0.0);
    CHECK(contains(read_file(dir / (strategy + "-bytes-" + direct + "-tls/logs/worker-1.log")), "mutual TLS"));
  }
}

TEST_CASE("the notebook's tensor-parallel and pipeline runs land on its printed losses") {
  TempDir dir;
  struct Case {
    std::string config;
    std::vector<int64_t> steps;   // where the notebook printed
    std::vector<double> losses;   // what it printed
    size_t exact;                 // how many of them Python PyTorch on this machine reproduces
  };
  // The pipeline cell prints at "iteration k + 3" the loss of micro-batch k. Past the first
  // values the notebook's own cell run here drifts from its print (its machine's BLAS rounded
  // differently and these losses are single batches); docs/strategies.md has all three rows.
  const std::vector<Case> cases = {
      {"notebook-tensor", {0, 1000, 2000}, {0.693, 0.510, 0.367}, 3},
      {"notebook-pipeline", {0, 1000, 2000, 3000, 4000}, {0.691, 0.599, 0.423, 0.367, 0.348}, 5},
  };
  for (const auto& c : cases) {
    INFO(c.config);
    const int code = run_experiment(dir, c.config);
    INFO("log:\n" << read_file(dir / (c.config + ".log")));
    REQUIRE(code == 0);
    const std::vector<double> losses = read_losses(dir / (c.config + "/losses.csv"));
    for (size_t i = 0; i < c.exact; ++i) {
      INFO("step " << c.steps[i]);
      CHECK(std::abs(losses.at(static_cast<size_t>(c.steps[i])) - c.losses[i]) <= 0.0015);
    }
  }
}

TEST_CASE("tensor and pipeline refuse models they cannot split and activations of the wrong shape, saying why") {
  TempDir dir;
  auto run = [&](const std::string& name, const std::vector<std::string>& args) {
    std::vector<std::string> all = {"simulate", "--dataset", "synthetic:n=64,features=16,classes=2,seed=1",
                                    "--loss", "bce", "--out", dir / name};
    all.insert(all.end(), args.begin(), args.end());
    const int code = run_fedra(all, dir / (name + ".log"), std::chrono::seconds(60));
    return std::make_pair(code, read_file(dir / (name + ".log")));
  };
  const auto [narrow_code, narrow] = run("narrow", {"--strategy", "tensor", "--workers", "4", "--model", "mlp:16-3-1",
                                                    "--tensor.workers", "4"});
  INFO(narrow);
  CHECK(narrow_code != 0);
  CHECK(contains(narrow, "tensor: layer fc1 (16-3) splits its outputs 4 ways, but it has only 3"));
  const auto [deep_code, deep] = run("deep", {"--strategy", "pipeline", "--workers", "3", "--model", "mlp:16-8-1",
                                              "--pipeline.stages", "3"});
  INFO(deep);
  CHECK(deep_code != 0);
  CHECK(contains(deep, "pipeline: 3 stages need 3 layers with weights; this model has 2 (flatten, fc1, relu1, fc2)"));
  // A stage sending activations of the wrong shape: the coordinator refuses to relay them (star),
  // or the next stage refuses them (chain); the round fails naming the sender, the tensor and the
  // shape the cut carries.
  for (const std::string topology : {"star", "chain"}) {
    const auto [shape_code, shape] = run("shape-" + topology,
                                         {"--strategy", "pipeline", "--workers", "2", "--model", "mlp:16-12-1",
                                          "--pipeline.steps", "20", "--pipeline.steps_per_round", "20",
                                          "--pipeline.testing.inject_bad_shape", "5", "--pipeline.batch_size", "16",
                                          "--pipeline.topology", topology});
    INFO(shape);
    CHECK(shape_code == 1);
    const std::string refused = "worker-0 sent activations float32[16,11] for micro-batch 5; the cut after stage 0 "
                                "carries [batch, 12]";
    if (topology == "star") {
      CHECK(contains(shape, "pipeline round 1 failed: worker-0 (stage 0) failed: " + refused));
    } else {
      // The receiver's refusal first; then the sender, whose link the receiver closed.
      CHECK(contains(shape, "pipeline round 1 failed: worker-1 (stage 1) failed: worker worker-1 reported: " + refused));
      CHECK(contains(shape, "; worker-0 (stage 0) failed: worker worker-0 reported: worker worker-0: chain step failed: "
                            "the link to worker-1"));
    }
  }
  const auto [cut_code, cut] = run("cut", {"--strategy", "pipeline", "--workers", "2", "--model", "mlp:16-8-1",
                                           "--pipeline.cuts", "relu7"});
  INFO(cut);
  CHECK(cut_code != 0);
  CHECK(contains(cut, "pipeline.cuts: the model has no layer 'relu7'; its layers are flatten, fc1, relu1, fc2"));
}

TEST_CASE("a worker killed mid-round fails the round with its name and stage; the last round's model is kept") {
  for (const std::string strategy : {"tensor", "pipeline"}) {
    INFO(strategy);
    TempDir dir;
    const std::string data = "synthetic:n=512,features=16,classes=2,seed=3";
    const ChildProcess coordinator = start_fedra(
        {"coordinator", "--listen", "127.0.0.1:0", "--port-file", dir / "port", "--strategy", strategy, "--model",
         "mlp:16-128-1", "--loss", "bce", "--min-workers", "2", "--" + strategy + ".steps", "1000000",
         "--" + strategy + ".steps_per_round", "500", "--test-data", data, "--out", dir / "out", "--threads", "1", "--wait-timeout", "5"},
        dir / "coordinator.log");
    const std::string port = wait_for_file(dir / "port", std::chrono::seconds(30));
    std::vector<ChildProcess> workers;
    for (int i = 0; i < 2; ++i) {
      workers.push_back(start_fedra({"worker", "--connect", "127.0.0.1:" + port, "--dataset", data, "--name",
                                     "worker-" + std::to_string(i), "--threads", "1"},
                                    dir / ("worker-" + std::to_string(i) + ".log")));
    }
    wait_for_lines(dir / "out/metrics.jsonl", 2, std::chrono::seconds(120));
    kill_child(workers[1]);
    const int code = finish(coordinator, std::chrono::seconds(60));
    const std::string log = read_file(dir / "coordinator.log");
    INFO("coordinator log:\n" << log);
    CHECK(code == 1);
    const std::string part = strategy == "tensor" ? "rank" : "stage";
    const std::string who = "worker-1 (" + part + " 1) failed";
    // Killed mid-round (a round takes ~100 ms, the gap between rounds ~1 ms): the round fails
    // naming the worker; killed between rounds, the next round's wait for 2 workers times out.
    const bool named = contains(log, strategy + " round ") && contains(log, who);
    CHECK((named || contains(log, "only 1 of 2 workers connected within 5 s")));
    if (named) {
      // Over direct links the survivor fails too (its link to the dead worker closed): the dead
      // worker is named first, as the cause.
      const std::string survivor = "worker-0 (" + part + " 0) failed";
      if (contains(log, survivor)) CHECK(log.find(who) < log.find(survivor));
    }
    const auto lines = read_jsonl(dir / "out/metrics.jsonl");
    REQUIRE(lines.size() >= 2);
    CHECK(contains(log, fmt::format("model.bin holds the model after round {}", lines.size())));
    const NamedTensors kept = load_model_file(dir / "out/model.bin");
    CHECK(kept.size() == 4);
    CHECK(nlohmann::json::parse(read_file(dir / "out/summary.json"))["status"] == "failed");
    // The surviving worker is told and leaves; it does not hang.
    CHECK(finish(workers[0], std::chrono::seconds(30)) != -1);
  }
}
