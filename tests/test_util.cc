#include "tests/testing.h"

#include "tests/test_util.h"

#include "core/data/partition.h"

#include <ATen/ATen.h>

#include <algorithm>

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "core/kit/error.h"

namespace fedra::test {

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl = std::string(base ? base : "/tmp") + "/fedra-test-XXXXXX";
  FEDRA_REQUIRE(::mkdtemp(tmpl.data()) != nullptr, "mkdtemp failed");
  path_ = tmpl;
}

TempDir::~TempDir() {
  if (std::getenv("FEDRA_KEEP_TEST_DIRS") == nullptr) {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<nlohmann::json> read_jsonl(const std::string& path) {
  std::vector<nlohmann::json> out;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty()) out.push_back(nlohmann::json::parse(line));
  }
  return out;
}

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

ChildProcess start_fedra(const std::vector<std::string>& args, const std::string& log) {
  std::vector<std::string> argv = {FEDRA_BINARY};
  argv.insert(argv.end(), args.begin(), args.end());
  return spawn(argv, log, {{"OMP_NUM_THREADS", "1"}});
}

int finish(const ChildProcess& child, std::chrono::seconds timeout) {
  auto code = wait_for(child, timeout);
  if (!code) {
    kill_child(child);
    return -1;
  }
  return *code;
}

int run_fedra(const std::vector<std::string>& args, const std::string& log,
              std::chrono::seconds timeout) {
  return finish(start_fedra(args, log), timeout);
}

std::string wait_for_file(const std::string& path, std::chrono::seconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    std::string s = read_file(path);
    if (!s.empty() && s.back() == '\n') return s.substr(0, s.size() - 1);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  FEDRA_FAIL("'{}' did not appear within {} s", path, timeout.count());
}

void wait_for_lines(const std::string& path, size_t lines, std::chrono::seconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    const std::string s = read_file(path);
    if (static_cast<size_t>(std::count(s.begin(), s.end(), '\n')) >= lines) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  FEDRA_FAIL("'{}' did not reach {} lines within {} s", path, lines, timeout.count());
}

void wait_for_text(const std::string& path, const std::string& text, std::chrono::seconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::string s;
  while (std::chrono::steady_clock::now() < deadline) {
    s = std::filesystem::exists(path) ? read_file(path) : "";
    if (contains(s, text)) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const size_t tail = s.size() > 2000 ? s.size() - 2000 : 0;
  FEDRA_FAIL("'{}' did not say '{}' within {} s; it ends:\n{}", path, text, timeout.count(), s.substr(tail));
}

double log_time(const std::string& log, const std::string& text) {
  const size_t at = log.find(text);
  FEDRA_REQUIRE(at != std::string::npos, "the log has no line with '{}'", text);
  const size_t line = log.rfind('\n', at) == std::string::npos ? 0 : log.rfind('\n', at) + 1;
  int h = 0, m = 0;
  double s = 0;
  FEDRA_REQUIRE(std::sscanf(log.c_str() + line, "[%d:%d:%lf]", &h, &m, &s) == 3,
                "the line with '{}' has no [HH:MM:SS.mmm] time: {}", text, log.substr(line, at - line + text.size()));
  return h * 3600.0 + m * 60.0 + s;
}

int run_experiment(const TempDir& dir, const std::string& name) {
  return run_fedra({"simulate", "--config", std::string(FEDRA_SOURCE_DIR) + "/experiments/" + name + ".cfg", "--out",
                    dir / name},
                   dir / (name + ".log"), std::chrono::seconds(300));
}

double max_diff(const NamedTensors& got, const NamedTensors& want) {
  REQUIRE(got.size() == want.size());
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    CHECK(got[i].first == want[i].first);
    REQUIRE(got[i].second.sizes() == want[i].second.sizes());
    worst = std::max(worst, (got[i].second - want[i].second).abs().max().item<double>());
  }
  return worst;
}

bool identical(const NamedTensors& a, const NamedTensors& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].first != b[i].first || !a[i].second.equal(b[i].second)) return false;
  }
  return true;
}

Job make_job(const std::string& strategy, const std::string& model, const std::string& loss,
             std::map<std::string, std::string> options, uint64_t seed) {
  Job job;
  job.strategy = strategy;
  job.model = model;
  job.loss = loss;
  job.seed = seed;
  job.options = OptionMap(strategy, std::move(options));
  return job;
}

std::vector<LocalWorker> iid_workers(const std::string& data, int64_t n, uint64_t seed) {
  const Dataset all = load_dataset(data, Splits::kTrain).train;
  const Partition p = partition_dataset(all.targets, all.num_classes, "iid", n, seed);
  std::vector<LocalWorker> out;
  for (int64_t k = 0; k < n; ++k) {
    out.push_back({fmt::format("worker-{}", k), std::make_shared<Dataset>(subset(all, p.clients[static_cast<size_t>(k)]))});
  }
  return out;
}

}  // namespace fedra::test
