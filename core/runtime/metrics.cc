#include "core/runtime/metrics.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/kit/error.h"
#include "core/system/files.h"

namespace fedra {

namespace {

nlohmann::ordered_json to_json(const Metrics& m) {
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  for (const auto& [k, v] : m) {
    std::visit([&, key = k](const auto& x) { j[key] = x; }, v);
  }
  return j;
}

}  // namespace

void keep_csv_rounds(const std::string& path, int64_t keep_rounds) {
  std::ifstream in(path);
  if (!in.good()) return;
  std::string line, kept;
  bool header = true;
  while (std::getline(in, line)) {
    if (header) {
      kept += line + "\n";
      header = false;
      continue;
    }
    char* end = nullptr;
    const long long round = std::strtoll(line.c_str(), &end, 10);
    if (end == line.c_str() || *end != ',' || round > keep_rounds) break;  // a later round, or cut short
    kept += line + "\n";
  }
  write_file_atomically(path, kept);
}

RunRecorder::RunRecorder(std::string out_dir, int64_t keep_rounds) : out_dir_(std::move(out_dir)) {
  if (out_dir_.empty()) return;
  std::error_code ec;
  std::filesystem::create_directories(out_dir_, ec);
  FEDRA_REQUIRE(!ec, "cannot create output directory '{}': {}", out_dir_, ec.message());
  const std::string path = out_dir_ + "/metrics.jsonl";
  int flags = O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC;
  if (keep_rounds >= 0) {
    std::ifstream in(path);
    std::string line, kept;
    while (std::getline(in, line)) {
      if (line.empty()) continue;
      nlohmann::ordered_json j;
      try {
        j = nlohmann::ordered_json::parse(line);
      } catch (const nlohmann::json::exception&) {
        break;  // a line cut short by the crash: nothing after it was recorded
      }
      if (j.value("round", int64_t{0}) > keep_rounds) break;
      Metrics m;
      for (const auto& [k, v] : j.items()) {
        if (v.is_number_integer()) m.emplace_back(k, v.get<int64_t>());
        else if (v.is_number()) m.emplace_back(k, v.get<double>());
        else if (v.is_string()) m.emplace_back(k, v.get<std::string>());
      }
      note(m);
      kept += line + "\n";
    }
    write_file_atomically(path, kept);
    flags = O_WRONLY | O_APPEND | O_CLOEXEC;
  }
  fd_ = ::open(path.c_str(), flags, 0644);
  FEDRA_REQUIRE(fd_ >= 0, "cannot create '{}': {} (is the directory writable?)", path,
                std::strerror(errno));
}

RunRecorder::~RunRecorder() {
  if (fd_ >= 0) ::close(fd_);
}

void RunRecorder::record_round(const Metrics& line) {
  note(line);
  if (fd_ < 0) return;
  const std::string path = out_dir_ + "/metrics.jsonl";
  write_fully(fd_, to_json(line).dump() + "\n", path);
  FEDRA_REQUIRE(::fsync(fd_) == 0, "cannot flush '{}' to disk: {}", path, std::strerror(errno));
}

void RunRecorder::note(const Metrics& line) {
  ++recorded_;
  last_ = line;
  for (const auto& [name, value] : line) {
    if (name != "test_accuracy" || !std::holds_alternative<double>(value)) continue;
    if (std::get<double>(value) > best_accuracy_) {
      best_accuracy_ = std::get<double>(value);
      best_round_ = 0;
      for (const auto& [k, v] : line) {
        if (k == "round" && std::holds_alternative<int64_t>(v)) best_round_ = std::get<int64_t>(v);
      }
    }
  }
}

void RunRecorder::write_summary(const RunSummary& s) {
  if (out_dir_.empty()) return;
  nlohmann::ordered_json j;
  j["strategy"] = s.strategy;
  j["status"] = s.status;
  if (!s.error.empty()) j["error"] = s.error;
  j["rounds_recorded"] = recorded_;
  j["final"] = recorded_ == 0 ? nlohmann::ordered_json::object() : to_json(last_);
  if (best_accuracy_ >= 0) {
    j["best_test_accuracy"] = best_accuracy_;
    j["best_round"] = best_round_;
  }
  // The privacy spent (fedavg.dp): every round's line carries the running total, failed ones too.
  if (recorded_ > 0) {
    const nlohmann::ordered_json last = to_json(last_);
    if (last.contains("dp_epsilon")) {
      j["dp_epsilon"] = last["dp_epsilon"];
      j["dp_delta"] = last["dp_delta"];
    }
  }
  j["elapsed_s"] = s.elapsed_s;
  j["bytes_up"] = s.bytes_up;
  j["bytes_down"] = s.bytes_down;
  j["peak_receive_bytes"] = s.peak_receive_bytes;
  j["peak_rss_bytes"] = s.peak_rss_bytes;
  j["workers"] = s.workers;
  j["config"] = s.config;
  write_file_atomically(out_dir_ + "/summary.json", j.dump(2) + "\n");
}

}  // namespace fedra
