// split end to end: real coordinator and worker processes over loopback TCP.
#include "tests/testing.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <set>

#include <torch/torch.h>

#include "core/data/batching.h"
#include "core/data/dataset.h"
#include "core/data/partition.h"
#include "core/model/model.h"
#include "core/training/training.h"
#include "tests/test_util.h"
#include "transport/codec.h"

using namespace fedra;
using namespace fedra::test;

namespace {

const char* kData = "synthetic:n=256,features=16,classes=2,seed=7";
constexpr int64_t kBatch = 8;
constexpr uint64_t kSeed = 11;

std::vector<Dataset> worker_data(const std::string& spec, int64_t workers) {
  Dataset all = load_dataset(spec, Splits::kTrain).train;
  if (workers == 1) return {all};
  Partition p = partition_dataset(all.targets, all.num_classes, "iid", workers, kSeed);
  std::vector<Dataset> parts;
  for (const auto& idx : p.clients) parts.push_back(subset(all, idx));
  return parts;
}

// The same training in one process: the whole network, the workers' local epochs one after the
// other (worker-0's, then worker-1's, ...) in sequential batches, torch::optim::SGD.
NamedTensors train_in_one_process(const std::string& model_spec, int64_t workers, int64_t epochs, double lr,
                                  double momentum) {
  const auto parts = worker_data(kData, workers);
  torch::nn::Sequential model = build_model(model_spec, kSeed);
  torch::optim::SGD opt(model->parameters(), torch::optim::SGDOptions(lr).momentum(momentum));
  for (int64_t e = 0; e < epochs; ++e) {
    for (const auto& d : parts) {
      const int64_t per_epoch = steps_per_epoch(d.size(), kBatch);
      for (int64_t s = 0; s < per_epoch; ++s) {
        const auto [b, end] = batch_rows("sequential", e * per_epoch + s, 0, kBatch, d.size());
        opt.zero_grad();
        compute_loss(model->forward(d.inputs.narrow(0, b, end - b)), d.targets.narrow(0, b, end - b), "bce")
            .backward();
        opt.step();
      }
    }
  }
  NamedTensors out;
  for (auto& [n, t] : model_state(*model)) out.emplace_back(n, t.clone());
  return out;
}

struct SplitRun {
  NamedTensors model;
  std::vector<nlohmann::json> lines;
};

SplitRun run_split(const TempDir& dir, const std::string& name, const std::string& model, int64_t workers,
                   std::vector<std::string> extra, int64_t batch = kBatch) {
  const std::string out = dir / name;
  std::vector<std::string> args = {
      "simulate", "--strategy", "split", "--workers", std::to_string(workers), "--dataset", kData,
      "--partition", "iid", "--model", model, "--loss", "bce", "--seed", std::to_string(kSeed),
      "--split.batch_size", std::to_string(batch), "--split.batches", "sequential", "--threads", "1",
      "--worker-threads", "1", "--out", out};
  args.insert(args.end(), extra.begin(), extra.end());
  const int code = run_fedra(args, dir / (name + ".log"), std::chrono::seconds(120));
  INFO("log:\n" << read_file(dir / (name + ".log")));
  REQUIRE(code == 0);
  return {load_model_file(out + "/model.bin"), read_jsonl(out + "/metrics.jsonl")};
}

bool moved_from_init(const NamedTensors& got, const std::string& model) {
  const auto init = model_state(*build_model(model, kSeed));
  for (size_t i = 0; i < got.size(); ++i) {
    if (!torch::equal(got[i].second, init[i].second)) return true;
  }
  return false;
}

// Runs of 2 workers over 2 epochs with split.testing.INJECTION = STEP: run(name, extra) returns
// the exit code and the log of one, its files in DIR/name.
// A faulty run's exit code and its log.
struct Outcome {
  int code = 0;
  std::string log;
};

auto faulty_split(const TempDir& dir, const std::string& injection, const std::string& step) {
  return [&dir, injection, step](const std::string& name, std::vector<std::string> extra) {
    std::vector<std::string> args = {
        "simulate", "--strategy", "split", "--workers", "2", "--dataset", kData, "--model",
        "mlp:16-64-32-1,cut=relu1", "--loss", "bce", "--seed", "3", "--split.epochs", "2",
        "--split.batch_size", "8", "--split.testing." + injection, step, "--threads", "1", "--worker-threads", "1",
        "--out", dir / name};
    args.insert(args.end(), extra.begin(), extra.end());
    const int code = run_fedra(args, dir / (name + ".log"), std::chrono::seconds(120));
    return Outcome{code, read_file(dir / (name + ".log"))};
  };
}

}  // namespace

TEST_CASE("split with one worker ends with the weights of the whole model trained in one process") {
  TempDir dir;
  const std::string model = "mlp:16-64-32-1,cut=relu1";
  const NamedTensors want = train_in_one_process(model, 1, 2, 0.1, 0.9);
  SUBCASE("labels on the coordinator") {
    const auto run = run_split(dir, "coord", model, 1,
                               {"--split.epochs", "2", "--split.lr", "0.1", "--split.momentum", "0.9"});
    CHECK(max_diff(run.model, want) < 2e-6);
    CHECK(moved_from_init(run.model, model));
    REQUIRE(run.lines.size() == 2);
    CHECK(run.lines[0]["steps"] == 32);  // 256 examples / 8
    CHECK(run.lines[1]["epoch"] == 2);
    CHECK(run.lines[1]["train_loss"].get<double>() < run.lines[0]["train_loss"].get<double>());
  }
  SUBCASE("U-shaped: head and labels on the worker") {
    const auto run = run_split(dir, "ushape", model, 1,
                               {"--split.labels", "worker", "--split.epochs", "2", "--split.lr", "0.1",
                                "--split.momentum", "0.9"});
    CHECK(max_diff(run.model, want) < 2e-6);
    CHECK(moved_from_init(run.model, model));
  }
}

TEST_CASE("fedra train is the same one-process training, with metrics per epoch") {
  TempDir dir;
  const std::string model = "mlp:16-64-32-1,cut=relu1";  // the cut is ignored
  const NamedTensors want = train_in_one_process(model, 1, 2, 0.1, 0.9);
  const int code = run_fedra({"train", "--model", model, "--dataset", kData, "--loss", "bce", "--seed",
                              std::to_string(kSeed), "--epochs", "2", "--batch-size", std::to_string(kBatch),
                              "--batches", "sequential", "--lr", "0.1", "--momentum", "0.9", "--threads", "1",
                              "--out", dir / "out"},
                             dir / "log", std::chrono::seconds(60));
  INFO(read_file(dir / "log"));
  REQUIRE(code == 0);
  CHECK(max_diff(load_model_file(dir / "out/model.bin"), want) < 2e-6);
  const auto lines = read_jsonl(dir / "out/metrics.jsonl");
  REQUIRE(lines.size() == 2);
  CHECK(lines[1]["epoch"] == 2);
  CHECK(lines[1]["steps"] == 32);
  CHECK(lines[1]["examples_per_s"].get<double>() > 0);
  CHECK(lines[1]["test_accuracy"].get<double>() > 0.5);
  CHECK(contains(read_file(dir / "out/summary.json"), "\"status\": \"completed\""));
}

TEST_CASE("sequential split over two workers equals one process taking their epochs in turn") {
  TempDir dir;
  const std::string model = "mlp:16-64-32-1,cut=relu2";  // two weighted layers below the cut
  const NamedTensors want = train_in_one_process(model, 2, 2, 0.1, 0.0);
  const auto run = run_split(dir, "seq2", model, 2, {"--split.epochs", "2", "--split.lr", "0.1"});
  CHECK(max_diff(run.model, want) < 2e-6);
  REQUIRE(run.lines.size() == 2);
  CHECK(run.lines[0]["workers_ok"] == 2);
  // Each worker's bytes are counted on their own.
  CHECK(run.lines[1]["bytes_up.worker-0"].get<int64_t>() > 0);
  CHECK(run.lines[1]["bytes_up.worker-1"].get<int64_t>() > 0);
}

TEST_CASE("pipelined split keeps micro-batches in flight, recomputes stale graphs and still learns") {
  TempDir dir;
  const std::string model = "mlp:16-64-32-1,cut=relu2";
  const NamedTensors exact = train_in_one_process(model, 1, 3, 0.1, 0.0);
  SUBCASE("labels on the coordinator") {
    const auto run = run_split(dir, "pipe", model, 1, {"--split.epochs", "3", "--split.lr", "0.1", "--split.pipeline", "3"});
    REQUIRE(run.lines.size() == 3);
    // fc2 reads fc1's output, so an update to fc2 breaks the saved graph: the worker redoes it.
    CHECK(run.lines[0]["worker_recomputes"].get<int64_t>() > 0);
    CHECK(run.lines[2]["train_loss"].get<double>() < run.lines[0]["train_loss"].get<double>());
    const double d = max_diff(run.model, exact);
    CHECK(d > 1e-5);  // staleness is real: not the sequential result...
    CHECK(d < 0.5);   // ...but close to it
  }
  SUBCASE("U-shaped, two workers in parallel (SplitFed)") {
    const auto run = run_split(dir, "pipe_u", "mlp:16-64-32-1,cut=relu1", 2,
                               {"--split.epochs", "3", "--split.lr", "0.1", "--split.pipeline", "2",
                                "--split.labels", "worker", "--split.schedule", "parallel"});
    REQUIRE(run.lines.size() == 3);
    CHECK(run.lines[0]["workers_ok"] == 2);
    CHECK(run.lines[0]["steps"] == 32);  // 2 workers x 128 examples / 8
    CHECK(run.lines[0]["recomputes"].get<int64_t>() > 0);  // the middle's graphs went stale
    CHECK(run.lines[2]["train_loss"].get<double>() < run.lines[0]["train_loss"].get<double>());
  }
}

TEST_CASE("bytes per epoch match the closed forms: split 2pq + 2*eta*N*K, FedAvg 2NK") {
  // Singh et al. count a weight hand-over once (client to client); Fedra relays it through the
  // coordinator, so it crosses twice: up from one worker, down to the next.
  TempDir dir;
  const int64_t K = 2, p = 256, features = 16, hidden = 512;
  const std::string model = fmt::format("mlp:{}-{}-1,cut=relu1", features, hidden);
  const double q = hidden * 4.0;                             // bytes of one example's activation
  const double bottom = (features * hidden + hidden) * 4.0;  // eta * N, in bytes
  const double whole = bottom + (hidden + 1) * 4.0;          // N
  const auto run = run_split(dir, "bytes", model, K, {"--split.epochs", "2"}, 32);
  REQUIRE(run.lines.size() == 2);
  auto total = [](const nlohmann::json& l) { return l["bytes_up"].get<double>() + l["bytes_down"].get<double>(); };
  const double split_epoch = total(run.lines[1]) - total(run.lines[0]);
  const double split_form = 2 * p * q + 2 * bottom * K;
  MESSAGE("split: measured " << split_epoch << " bytes per epoch, closed form " << split_form);
  CHECK(std::abs(split_epoch / split_form - 1) < 0.05);

  const std::string out = dir / "fedavg";
  REQUIRE(run_fedra({"simulate", "--strategy", "fedavg", "--workers", std::to_string(K), "--dataset", kData,
                     "--model", model, "--loss", "bce", "--seed", std::to_string(kSeed), "--fedavg.rounds", "2",
                     "--fedavg.local_epochs", "1", "--threads", "1", "--worker-threads", "1", "--out", out},
                    dir / "fedavg.log", std::chrono::seconds(120)) == 0);
  const auto lines = read_jsonl(out + "/metrics.jsonl");
  REQUIRE(lines.size() == 2);
  const double fedavg_epoch = total(lines[1]) - total(lines[0]);
  const double fedavg_form = 2 * whole * K;
  MESSAGE("fedavg: measured " << fedavg_epoch << " bytes per epoch, closed form " << fedavg_form);
  CHECK(std::abs(fedavg_epoch / fedavg_form - 1) < 0.05);
}

TEST_CASE("a worker dying mid-turn fails the round with its name, or is skipped with on_failure=continue") {
  TempDir dir;
  const auto run = faulty_split(dir, "inject_exit", "5");
  SUBCASE("fail") {
    const Outcome r = run("fail", {});
    INFO(r.log);
    CHECK(r.code == 1);
    CHECK(contains(r.log, "split round 1 failed: worker-1 failed mid-turn"));
    CHECK(contains(r.log, "split.on_failure=continue"));
  }
  SUBCASE("continue") {
    const Outcome r = run("cont", {"--split.on_failure", "continue"});
    INFO(r.log);
    CHECK(r.code == 0);
    const auto lines = read_jsonl(dir / "cont/metrics.jsonl");
    REQUIRE(lines.size() == 2);
    CHECK(lines[0]["workers_failed"] == 1);
    CHECK(lines[0]["workers_ok"] == 1);
    CHECK(lines[1]["workers_asked"] == 1);  // the lost worker is gone; the other goes on
    CHECK(lines[1]["workers_ok"] == 1);
  }
}

TEST_CASE("activations of the wrong shape are refused with what was sent, and the others go on") {
  TempDir dir;
  const auto run = faulty_split(dir, "inject_bad_shape", "3");
  SUBCASE("fail") {
    const Outcome r = run("fail", {});
    INFO(r.log);
    CHECK(r.code == 1);
    CHECK(contains(r.log, "activations float32[8,63] from worker-1 do not fit the top of 'mlp:16-64-32-1,cut=relu1'"));
  }
  SUBCASE("continue") {
    const Outcome r = run("cont", {"--split.on_failure", "continue", "--split.schedule", "parallel"});
    INFO(r.log);
    CHECK(r.code == 0);
    const auto lines = read_jsonl(dir / "cont/metrics.jsonl");
    REQUIRE(lines.size() == 2);
    CHECK(lines[0]["workers_failed"] == 1);
    CHECK(lines[0]["workers_ok"] == 1);
    CHECK(contains(lines[0]["failures"].get<std::string>(), "float32[8,63]"));
  }
}

namespace {

// Every frame a worker sent, decoded, with its raw bytes.
struct SentFrame {
  std::string bytes;
  Message message;
};

std::vector<SentFrame> sent_frames(const std::string& dir) {
  std::vector<std::string> paths;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    if (contains(e.path().filename().string(), "-sent-")) paths.push_back(e.path().string());
  }
  std::sort(paths.begin(), paths.end());
  std::vector<SentFrame> out;
  for (const auto& path : paths) {
    SentFrame f;
    f.bytes = read_file(path);
    transport::Limits limits;
    const auto* data = reinterpret_cast<const std::byte*>(f.bytes.data());
    f.message = from_envelope(transport::decode(transport::InFrame::from_bytes(data, f.bytes.size(), limits), limits));
    out.push_back(std::move(f));
  }
  return out;
}

// How many of the samples have their bytes (float32 as held in memory, or the raw 8-bit pixels)
// somewhere in `bytes`. A 64-byte window from the middle of each image is enough to find a copy.
int64_t samples_found(const std::string& bytes, const Dataset& data) {
  const at::Tensor x = data.inputs.reshape({data.size(), -1}).contiguous();
  const at::Tensor pixels = ((x * 0.3530 + 0.2860) * 255).round().clamp(0, 255).to(at::kByte).contiguous();
  const int64_t d = x.size(1);
  int64_t found = 0;
  for (int64_t i = 0; i < data.size(); ++i) {
    // Centred on the middle of the image (row 14, column 14 of 28x28), where the garment is.
    const int64_t centre = d / 2 + 14;
    const auto* f = reinterpret_cast<const char*>(x[i].data_ptr<float>()) + (centre - 8) * 4;
    const auto* u = reinterpret_cast<const char*>(pixels[i].data_ptr<uint8_t>()) + centre - 32;
    if (bytes.find(std::string(f, 64)) != std::string::npos || bytes.find(std::string(u, 64)) != std::string::npos) {
      ++found;
    }
  }
  return found;
}

void run_pair(const TempDir& dir, const std::string& model, const std::vector<std::string>& coordinator_extra,
              const std::vector<std::string>& worker_extra) {
  std::vector<std::string> c = {"coordinator", "--listen", "127.0.0.1:0", "--port-file", dir / "port",
                                "--strategy", "split", "--model", model, "--test-data", "fmnist:test_limit=500",
                                "--split.epochs", "2", "--split.max_steps", "6", "--split.batch_size", "16",
                                "--threads", "1", "--out", dir / "out"};
  c.insert(c.end(), coordinator_extra.begin(), coordinator_extra.end());
  auto coordinator = start_fedra(c, dir / "coordinator.log");
  const std::string port = wait_for_file(dir / "port", std::chrono::seconds(30));
  std::vector<std::string> w = {"worker", "--connect", "127.0.0.1:" + port, "--name", "hospital",
                                "--dataset", "fmnist:limit=256", "--dump-frames", dir / "frames"};
  w.insert(w.end(), worker_extra.begin(), worker_extra.end());
  auto worker = start_fedra(w, dir / "worker.log");
  const int code = finish(coordinator, std::chrono::seconds(120));
  INFO("coordinator log:\n" << read_file(dir / "coordinator.log") << "\nworker log:\n" << read_file(dir / "worker.log"));
  REQUIRE(code == 0);
  CHECK(finish(worker, std::chrono::seconds(30)) == 0);
}

}  // namespace

TEST_CASE("privacy: no raw sample crosses the wire; in U-shaped mode no label either") {
  const Dataset data = load_dataset("fmnist:limit=256", Splits::kTrain).train;
  REQUIRE(data.size() == 256);

  SUBCASE("the detector finds samples in a frame that carries them") {
    Message leak("leak");
    leak.tensors.emplace_back("x", data.inputs.narrow(0, 0, 16));
    const auto bytes = transport::encode(to_envelope(leak), {}).to_bytes();
    CHECK(samples_found(std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size()), data) >= 16);
    Message leak_pixels("leak");
    const at::Tensor px = ((data.inputs.narrow(0, 0, 4) * 0.3530 + 0.2860) * 255).round().to(at::kByte);
    leak_pixels.tensors.emplace_back("pixels", px);
    const auto pbytes = transport::encode(to_envelope(leak_pixels), {}).to_bytes();
    CHECK(samples_found(std::string(reinterpret_cast<const char*>(pbytes.data()), pbytes.size()), data) >= 4);
  }

  SUBCASE("labels on the coordinator: activations and labels go up, never inputs") {
    TempDir dir;
    run_pair(dir, "lenet5:cut=pool1", {}, {});
    const auto frames = sent_frames(dir / "frames");
    REQUIRE(frames.size() > 12);  // hello + 2 turns x (6 activations + done)
    int64_t acts = 0, label_tensors = 0;
    for (const auto& f : frames) {
      CHECK(samples_found(f.bytes, data) == 0);
      for (const auto& [name, t] : f.message.tensors) {
        if (name == "act") ++acts;
        if (name == "labels") ++label_tensors;
      }
    }
    CHECK(acts == 12);
    CHECK(label_tensors == 12);  // this mode sends labels, and the frames show it
  }

  SUBCASE("U-shaped with --private-labels: no labels, no label histogram, no integer tensor") {
    TempDir dir;
    run_pair(dir, "lenet5:cut=pool1", {"--split.labels", "worker"}, {"--private-labels"});
    const auto frames = sent_frames(dir / "frames");
    REQUIRE(frames.size() > 24);  // hello + 2 turns x (6 x (act + outgrad) + done)
    std::set<std::string> kinds;
    for (const auto& f : frames) {
      INFO(f.message.kind);
      kinds.insert(f.message.kind);
      CHECK(samples_found(f.bytes, data) == 0);
      for (const auto& [name, t] : f.message.tensors) {
        INFO(name);
        CHECK(name != "labels");
        CHECK(name != "label_histogram");
        CHECK(at::isFloatingType(t.scalar_type()));
      }
    }
    CHECK(kinds == std::set<std::string>{"hello", "split.act", "split.outgrad", "split.done"});
  }
}

TEST_CASE("split rejects a model spec without a usable cut, naming the layers") {
  TempDir dir;
  const int code = run_fedra({"simulate", "--strategy", "split", "--workers", "1", "--dataset", kData, "--model",
                              "mlp:16-8-1,cut=conv9", "--loss", "bce", "--out", dir / "o"},
                             dir / "log", std::chrono::seconds(60));
  const std::string log = read_file(dir / "log");
  INFO(log);
  CHECK(code != 0);
  CHECK(contains(log, "no layer 'conv9'"));
  CHECK(contains(log, "flatten, fc1, relu1, fc2"));
}
