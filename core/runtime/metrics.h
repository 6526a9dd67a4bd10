// RunRecorder: the documented output files of a run (docs/outputs.md).
//
//   DIR/metrics.jsonl  one JSON object per round, appended and flushed (and fsync'd) as the round
//                      ends, so a crash loses at most the round in progress
//   DIR/summary.json   final figures, status and the full resolved configuration, written
//                      atomically (temporary file, fsync, rename) at the end of the run
// A write that fails (full disk, unwritable directory) throws Error naming the file and the
// system's reason. Without an output directory the recorder keeps the records in memory only.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/kit/strategy.h"

namespace fedra {

struct RunSummary {
  std::string strategy;
  std::string status;  // "completed", "failed" or "interrupted"
  std::string error;
  double elapsed_s = 0;
  uint64_t bytes_up = 0;
  uint64_t bytes_down = 0;
  uint64_t peak_receive_bytes = 0;
  uint64_t peak_rss_bytes = 0;
  std::vector<std::string> workers;
  std::map<std::string, std::string> config;
};

class RunRecorder {
 public:
  // Creates `out_dir` if needed and truncates metrics.jsonl; empty `out_dir` records nothing.
  // With keep_rounds >= 0 (resuming), metrics.jsonl keeps its lines of rounds 1..keep_rounds
  // (rewritten atomically, later lines dropped: those rounds run again) and is appended to.
  explicit RunRecorder(std::string out_dir, int64_t keep_rounds = -1);
  ~RunRecorder();

  void record_round(const Metrics& line);
  void write_summary(const RunSummary& summary);

  const std::string& out_dir() const { return out_dir_; }

 private:
  void note(const Metrics& line);  // counts the line, keeps it as the last and the best accuracy
  std::string out_dir_;
  int fd_ = -1;
  // What summary.json needs, kept as lines arrive (not every line: an asynchronous run of
  // thousands of server updates, or a line per worker's bytes of 1,000 clients, would pile up).
  int64_t recorded_ = 0;
  Metrics last_;
  double best_accuracy_ = -1;
  int64_t best_round_ = 0;
};

// A resumed run's CSV whose first column is the round (OUT/losses.csv): keeps the header and the
// rows of rounds 1..keep_rounds, rewritten atomically; a missing file is left missing.
void keep_csv_rounds(const std::string& path, int64_t keep_rounds);

}  // namespace fedra
