// Coordinator: runs one job from start to end on the coordinator's side.
//
// Construction validates everything that can be checked alone (strategy and its options, the
// model spec, the test data, the output directory) and binds the listening socket, so a bad
// configuration fails before any worker is involved and a caller (fedra simulate) can read the
// bound address before starting workers. run() waits for min_workers (up to wait_timeout), runs
// the strategy's coordinator half, tells every worker to shut down, and writes summary.json with
// the outcome. run() does not throw for a failed job: it logs the reason, records it in the
// summary, and returns a non-zero exit code.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <string>

#include "core/data/dataset.h"
#include "core/kit/registry.h"
#include "core/net/tcp_cohort.h"
#include "core/runtime/metrics.h"

namespace fedra {

struct CoordinatorConfig {
  CohortConfig cohort;  // listen address, token, limits, job
  size_t min_workers = 1;
  std::chrono::milliseconds wait_timeout{120000};
  std::string test_data;  // dataset spec whose test split is evaluated; empty: none
  // test_data was given as --test-data: a spec naming one file and no test split (tensors:PATH,
  // csv:train=PATH) is the test set as a whole.
  bool test_data_given = false;
  int threads = 0;        // LibTorch intra-op threads; 0: all cores
  std::string out_dir;    // metrics.jsonl and summary.json; empty: none
  std::string port_file;  // if set, the bound port is written here once listening
  // If set, HOST:PORT for workers (advertised_address of `advertise` and the bound address) is
  // written here once listening, for `fedra worker --connect file:PATH` (core/runtime/placement.h).
  std::string address_file;
  std::string advertise;
  // Continue the run in out_dir from its last checkpoint (OUT/checkpoint/state.json): the
  // strategy's state and round are restored and metrics.jsonl keeps the rounds before it.
  bool resume = false;
  // When checkpoints are written (resumable strategies, with out_dir): after every Nth round
  // (0: not by count), and after a round that ends `checkpoint_seconds` or more after the last
  // checkpoint (0: not by time); always after the last round. The newest `checkpoint_keep` are
  // kept.
  uint32_t checkpoint_every = 1;
  double checkpoint_seconds = 0;
  uint32_t checkpoint_keep = 1;
  int round_retries = 0;  // RunContext::round_retries
  std::map<std::string, std::string> resolved_config;  // recorded in summary.json
};

class Coordinator {
 public:
  Coordinator(CoordinatorConfig config, const StrategyRegistry& registry);
  ~Coordinator();

  std::string local_address() const;
  // Returns 0 if the job completed, 1 if it failed, 130 if interrupted.
  int run();

 private:
  void load_test_data();
  void refuse_to_overwrite_checkpoint() const;
  void refuse_completed_run() const;
  void read_checkpoint();  // --resume (core/runtime/checkpoints.cc)
  void listen();
  RunContext context();
  void report(uint32_t round, uint32_t total, Metrics line);
  void checkpoint(uint32_t round, uint32_t total, const std::function<NamedTensors()>& state);
  void prune_checkpoints(const std::string& dir, uint32_t round) const;
  int finish(RunSummary& summary, int code);
  // Since the job began: a resumed run adds what its checkpoint recorded.
  double elapsed() const;
  uint64_t bytes_up() const;
  uint64_t bytes_down() const;

  CoordinatorConfig config_;
  std::unique_ptr<CoordinatorStrategy> strategy_;
  DatasetSplits test_data_;
  std::unique_ptr<RunRecorder> recorder_;
  // Every resolved option, strategy options as STRATEGY.NAME: summary.json's config, recorded
  // with each checkpoint and compared on --resume.
  std::map<std::string, std::string> all_options() const;
  uint32_t resume_round_ = 0;
  uint64_t up_offset_ = 0, down_offset_ = 0;  // a resumed run's totals before it (from the checkpoint)
  double elapsed_offset_ = 0;
  NamedTensors resume_state_;
  std::unique_ptr<Cohort> cohort_;
  Clock::time_point started_;
  std::pair<uint32_t, Clock::time_point> last_checkpoint_;  // its round (0: none yet) and when
};

}  // namespace fedra
