// Helpers shared by the test suites: temporary directories, files, JSON lines, and running the
// real `fedra` binary as a child process with a timeout (a test never hangs).
#pragma once

#include <chrono>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/kit/message.h"
#include "core/kit/strategy.h"
#include "core/system/subprocess.h"
#include "tests/support/local_cohort.h"

namespace fedra::test {

// A fresh directory under $TMPDIR (or /tmp), removed when the object dies unless
// FEDRA_KEEP_TEST_DIRS is set.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

std::string read_file(const std::string& path);
std::vector<nlohmann::json> read_jsonl(const std::string& path);
bool contains(const std::string& haystack, const std::string& needle);

// Runs `fedra ARGS...` to completion (killing it after `timeout`), output in `log`; returns the
// exit code, or -1 on timeout.
int run_fedra(const std::vector<std::string>& args, const std::string& log,
              std::chrono::seconds timeout);
ChildProcess start_fedra(const std::vector<std::string>& args, const std::string& log);
// Waits for the child; kills it and returns -1 after `timeout`.
int finish(const ChildProcess& child, std::chrono::seconds timeout);
// Waits until `path` exists and is non-empty (a --port-file), or throws after `timeout`.
std::string wait_for_file(const std::string& path, std::chrono::seconds timeout);
// Waits until `path` (a metrics.jsonl being written) holds at least `lines` complete lines, or
// throws after `timeout`.
void wait_for_lines(const std::string& path, size_t lines, std::chrono::seconds timeout);
// Waits until `path` (a log being written) contains `text`, or throws after `timeout`, naming the
// text and the file's last lines. Tests wait for the event they need, not for a guessed time.
void wait_for_text(const std::string& path, const std::string& text, std::chrono::seconds timeout);
// The time of day, in seconds, of the first line of `log` (Fedra's "[HH:MM:SS.mmm] ..." lines) that
// contains `text`; throws if none does. For measuring how long something took from the log's own
// clock, not from when a (possibly slow to start) process was launched.
double log_time(const std::string& log, const std::string& text);

// `fedra simulate --config experiments/NAME.cfg --out DIR/NAME`, its log in DIR/NAME.log;
// returns the exit code.
int run_experiment(const TempDir& dir, const std::string& name);

// The largest absolute difference between two models of the same names and shapes (checked).
double max_diff(const NamedTensors& got, const NamedTensors& want);
// Same names in the same order, and the same bits.
bool identical(const NamedTensors& a, const NamedTensors& b);

// A job as the coordinator resolves it: the strategy's options as given, the rest defaulted.
Job make_job(const std::string& strategy, const std::string& model, const std::string& loss,
             std::map<std::string, std::string> options, uint64_t seed);
// `n` workers "worker-0".., each with its iid part (drawn with `seed`) of `data`'s training split.
std::vector<LocalWorker> iid_workers(const std::string& data, int64_t n, uint64_t seed);

// The value of metric `name` in one round's line, as T; throws (failing the test) if it is absent.
// (In a namespace of its own: some suites read lines with optional metrics under the same name.)
namespace lines {
template <class T>
T metric(const Metrics& line, const std::string& name) {
  for (const auto& [k, v] : line) {
    if (k == name) return std::get<T>(v);
  }
  FEDRA_FAIL("no metric {} in the round's line", name);
}
}  // namespace lines

}  // namespace fedra::test
