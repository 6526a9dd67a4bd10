// Secure aggregation with real processes over loopback TCP: workers whose processes exit after
// sharing keys and after uploading, and what the coordinator receives, decoded from the dumped
// frames: under secagg no upload correlates with its worker's true update; without it (the
// positive control) every upload is the update.
#include "tests/testing.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>

#include "core/kit/message.h"
#include "tests/test_util.h"
#include "transport/codec.h"

using namespace fedra;
using namespace fedra::test;
namespace fs = std::filesystem;

namespace {

// The messages a worker sent (or received) in order, from its --dump-frames directory.
std::vector<Message> frames(const std::string& dir, bool sent) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().string());
  std::sort(names.begin(), names.end());
  std::vector<Message> out;
  for (const auto& path : names) {
    if (!contains(path, sent ? "-sent-" : "-recv-")) continue;
    const std::string bytes = read_file(path);
    const auto* data = reinterpret_cast<const std::byte*>(bytes.data());
    auto env = transport::decode(transport::InFrame::from_bytes(data, bytes.size(), {}), {});
    Message m = from_envelope(std::move(env));
    for (auto& [name, t] : m.tensors) t = t.clone();  // own the bytes past this function
    out.push_back(std::move(m));
  }
  return out;
}

const Message& find(const std::vector<Message>& ms, const std::string& kind) {
  for (const auto& m : ms) {
    if (m.kind == kind) return m;
  }
  FAIL("no " << kind << " frame");
  return ms.front();
}

// The float tensors of a model message, as one vector.
std::vector<double> flat(const NamedTensors& ts) {
  std::vector<double> out;
  for (const auto& [name, t] : ts) {
    if (name.find('/') != std::string::npos || !t.is_floating_point()) continue;
    const at::Tensor d = t.to(at::kDouble).contiguous().flatten();
    out.insert(out.end(), d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
  }
  return out;
}

double correlation(const std::vector<double>& a, const std::vector<double>& b) {
  REQUIRE(a.size() == b.size());
  double ma = 0, mb = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    ma += a[i];
    mb += b[i];
  }
  ma /= static_cast<double>(a.size());
  mb /= static_cast<double>(b.size());
  double sab = 0, saa = 0, sbb = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    sab += (a[i] - ma) * (b[i] - mb);
    saa += (a[i] - ma) * (a[i] - ma);
    sbb += (b[i] - mb) * (b[i] - mb);
  }
  return sab / std::sqrt(saa * sbb);
}

// One round of FedAvg, a coordinator and three workers started by hand, each worker dumping its
// frames to DIR/frames-worker-I.
void one_round(const TempDir& dir, bool secagg) {
  const ChildProcess coordinator = start_fedra(
      {"coordinator", "--listen", "127.0.0.1:0", "--port-file", dir / "port", "--min-workers", "3", "--model",
       "mlp:784-32-10", "--seed", "3", "--test-data", "fmnist:limit=500", "--fedavg.rounds", "1", "--fedavg.momentum", "0",
       "--fedavg.secagg", secagg ? "true" : "false", "--out", dir / "out"},
      dir / "coordinator.log");
  const std::string port = wait_for_file(dir / "port", std::chrono::seconds(60));
  std::vector<ChildProcess> workers;
  for (int i = 0; i < 3; ++i) {
    const std::string name = "worker-" + std::to_string(i);
    workers.push_back(start_fedra({"worker", "--connect", "127.0.0.1:" + port, "--name", name, "--client",
                                   std::to_string(i) + "/3", "--dataset", "fmnist:limit=1500", "--seed", "3",
                                   "--dump-frames", dir / ("frames-" + name)},
                                  dir / (name + ".log")));
  }
  REQUIRE(finish(coordinator, std::chrono::seconds(120)) == 0);
  for (const auto& w : workers) CHECK(finish(w, std::chrono::seconds(30)) == 0);
}

}  // namespace

TEST_CASE("secagg: no upload the coordinator receives holds a worker's update; without secagg every one does") {
  // Three runs of the same round (same seeds, data and training): `truth` gives each worker's true
  // update, `control` (plain FedAvg) and `secure` (secagg) the frames the coordinator received.
  TempDir truth_dir, control_dir, secure_dir;
  one_round(truth_dir, false);
  one_round(control_dir, false);
  one_round(secure_dir, true);
  const auto plain_lines = read_jsonl(truth_dir / "out/metrics.jsonl");
  const auto secure_lines = read_jsonl(secure_dir / "out/metrics.jsonl");
  // The same aggregate to the fixed-point tolerance.
  CHECK(secure_lines.at(0)["test_loss"].get<double>() ==
        doctest::Approx(plain_lines.at(0)["test_loss"].get<double>()).epsilon(1e-5));
  for (int i = 0; i < 3; ++i) {
    const std::string name = "worker-" + std::to_string(i);
    CAPTURE(name);
    const std::vector<double> global = flat(find(frames(truth_dir / ("frames-" + name), false), "fedavg.fit").tensors);
    const std::vector<double> trained =
        flat(find(frames(truth_dir / ("frames-" + name), true), "fedavg.fit_result").tensors);
    std::vector<double> update(global.size());
    for (size_t j = 0; j < update.size(); ++j) update[j] = trained[j] - global[j];

    // Positive control: the detector (upload minus the global model, correlated with the true update)
    // finds the update in another run's plain upload...
    const std::vector<double> control =
        flat(find(frames(control_dir / ("frames-" + name), true), "fedavg.fit_result").tensors);
    std::vector<double> seen(global.size());
    for (size_t j = 0; j < seen.size(); ++j) seen[j] = control[j] - global[j];
    CHECK(correlation(update, seen) > 0.99);
    // ...and tells it from another worker's.
    const std::string other = "worker-" + std::to_string((i + 1) % 3);
    const std::vector<double> other_trained =
        flat(find(frames(truth_dir / ("frames-" + other), true), "fedavg.fit_result").tensors);
    std::vector<double> other_update(global.size());
    for (size_t j = 0; j < other_update.size(); ++j) other_update[j] = other_trained[j] - global[j];
    CHECK(correlation(other_update, seen) < correlation(update, seen) - 0.01);

    // Under secagg: every frame the worker sent, decoded as the coordinator would try to.
    const auto secure_sent = frames(secure_dir / ("frames-" + name), true);
    const auto secure_recv = frames(secure_dir / ("frames-" + name), false);
    const Message& fit = find(secure_recv, "fedavg.fit");
    const int frac_bits = std::stoi(fit.option("secagg.frac_bits"));
    const double weight = std::stod(fit.option("secagg.weight"));
    std::vector<std::string> kinds;
    for (const auto& m : secure_sent) kinds.push_back(m.kind);
    CHECK(std::find(kinds.begin(), kinds.end(), "fedavg.fit_result") == kinds.end());
    const at::Tensor y = find(secure_sent, "secagg.masked").tensor("y").to(at::kDouble).contiguous();
    REQUIRE(static_cast<size_t>(y.numel()) == update.size());
    std::vector<double> decoded(update.size());
    for (size_t j = 0; j < update.size(); ++j) decoded[j] = y.data_ptr<double>()[j] / (weight * std::ldexp(1.0, frac_bits));
    const double r = correlation(update, decoded);
    MESSAGE(name << ": correlation of the masked upload with the true update " << r);
    CHECK(std::abs(r) < 0.05);  // 25,450 coordinates: chance alone stays below ~0.02
    // Nothing else it sent carries a model-sized tensor.
    for (const auto& m : secure_sent) {
      for (const auto& [tname, t] : m.tensors) {
        if (m.kind != "secagg.masked") CHECK(t.numel() < 1000);
      }
    }
  }
}

TEST_CASE("secagg: worker processes that exit after sharing keys and after uploading; the round and the next go on") {
  TempDir dir;
  const int code = run_fedra(
      {"simulate", "--workers", "5", "--model", "mlp:784-32-10", "--dataset", "fmnist:limit=2500", "--fedavg.rounds", "2",
       "--fedavg.secagg", "true", "--fedavg.secagg_timeout", "20", "--fedavg.testing.secagg_drop",
       "worker-1:shares:exit@1,worker-3:masked:exit@1", "--out", dir / "out"},
      dir / "simulate.log", std::chrono::seconds(300));
  const auto lines = read_jsonl(dir / "out/metrics.jsonl");
  REQUIRE(lines.size() == 2);
  CHECK(lines[0]["status"] == "ok");
  CHECK(lines[0]["secagg_dropped"] == 2);
  CHECK(lines[0]["workers_ok"] == 4);  // worker-3 uploaded before it exited: its update is in the sum
  CHECK(lines[1]["status"] == "ok");
  CHECK(lines[1]["workers_ok"] == 3);  // the two are gone for good
  CHECK(lines[1]["test_accuracy"].get<double>() > 0.5);
  const std::string log = read_file(dir / "simulate.log");
  CHECK(contains(log, "secure aggregation goes on without worker-1"));
  CHECK(contains(log, "secure aggregation goes on without worker-3"));
  MESSAGE("simulate exit code " << code);
}
