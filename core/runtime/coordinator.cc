#include "core/runtime/coordinator.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "core/model/model.h"
#include "core/runtime/placement.h"
#include "core/system/files.h"
#include "core/system/process.h"
#include "core/system/stop.h"
#include "core/training/training.h"
#include "transport/codec.h"

namespace fedra {

namespace {

std::string format_metric(const MetricValue& v) {
  if (const auto* d = std::get_if<double>(&v)) return fmt::format("{:.4f}", *d);
  if (const auto* i = std::get_if<int64_t>(&v)) return std::to_string(*i);
  if (const auto* list = std::get_if<std::vector<double>>(&v)) return fmt::format("[{:.3f}]", fmt::join(*list, " "));
  return std::get<std::string>(v);
}

const MetricValue* find_metric(const Metrics& m, const std::string& key) {
  for (const auto& [k, v] : m) {
    if (k == key) return &v;
  }
  return nullptr;
}

}  // namespace

Coordinator::Coordinator(CoordinatorConfig config, const StrategyRegistry& registry)
    : config_(std::move(config)) {
  config_.threads = configure_threads(config_.threads);
  Job& job = config_.cohort.job;
  job.options = registry.resolve_options(job.strategy, job.options);
  const StrategyInfo& info = registry.get(job.strategy);
  strategy_ = info.make_coordinator(job);
  info.make_worker(job);  // the worker half validates the same options now, not on every worker
  if (!config_.test_data.empty()) load_test_data();
  if (config_.resume) {
    read_checkpoint();
  } else if (!config_.out_dir.empty()) {
    refuse_to_overwrite_checkpoint();
  }
  recorder_ = std::make_unique<RunRecorder>(config_.out_dir, config_.resume ? int64_t{resume_round_} : -1);
  listen();
}

void Coordinator::load_test_data() {
  const Job& job = config_.cohort.job;
  test_data_ = load_dataset(config_.test_data, Splits::kTest);
  if (test_data_.test.size() == 0 && config_.test_data_given) {
    DatasetSplits whole = load_dataset(config_.test_data, Splits::kTrain);
    if (whole.train.size() > 0) {
      spdlog::info("evaluating on all of '{}' (--test-data names no separate test split)", config_.test_data);
      test_data_.test = std::move(whole.train);
    }
  }
  if (test_data_.test.size() == 0) {
    spdlog::warn("dataset '{}' has no test split: rounds will not be evaluated",
                 config_.test_data);
  }
  check_model_fits(job.model, job.seed, test_data_.test, job.loss,
                   fmt::format("the test data of '{}' (--test-data)", config_.test_data));
}

void Coordinator::refuse_to_overwrite_checkpoint() const {
  // A forgotten --resume must not cost the checkpoint: a fresh run would overwrite it.
  const std::string state_path = config_.out_dir + "/checkpoint/state.json";
  FEDRA_REQUIRE(!std::filesystem::exists(state_path),
                "{} holds the checkpoint of an earlier run ({}); continue it with --resume {}, or give another "
                "--out (delete {}/checkpoint to start over there)",
                config_.out_dir, state_path, config_.out_dir, config_.out_dir);
}

void Coordinator::listen() {
  const Job& job = config_.cohort.job;
  cohort_ = std::make_unique<TcpCohort>(config_.cohort);
  if (!config_.port_file.empty()) {
    const std::string addr = cohort_->local_address();
    write_file_atomically(config_.port_file, addr.substr(addr.rfind(':') + 1) + "\n");
  }
  if (!config_.address_file.empty()) {
    const std::string addr = advertised_address(config_.advertise, cohort_->local_address());
    write_file_atomically(config_.address_file, addr + "\n");
    spdlog::info("workers reach this coordinator at {} (written to {})", addr, config_.address_file);
  }
  spdlog::info("coordinator listening on {} (strategy {}, model {}, {} threads)",
               cohort_->local_address(), job.strategy, job.model, config_.threads);
}

Coordinator::~Coordinator() = default;

std::map<std::string, std::string> Coordinator::all_options() const {
  std::map<std::string, std::string> all = config_.resolved_config;
  for (const auto& [k, v] : config_.cohort.job.options.values()) all.emplace(config_.cohort.job.strategy + "." + k, v);
  return all;
}

std::string Coordinator::local_address() const { return cohort_->local_address(); }

double Coordinator::elapsed() const {
  return elapsed_offset_ + std::chrono::duration<double>(Clock::now() - started_).count();
}
uint64_t Coordinator::bytes_up() const { return up_offset_ + cohort_->bytes_up(); }
uint64_t Coordinator::bytes_down() const { return down_offset_ + cohort_->bytes_down(); }

RunContext Coordinator::context() {
  RunContext ctx;
  ctx.job = config_.cohort.job;
  ctx.dataset = config_.test_data;
  ctx.out_dir = config_.out_dir;
  ctx.test_set = test_data_.test.size() > 0 ? &test_data_.test : nullptr;
  ctx.threads = config_.threads;
  ctx.wait_timeout = config_.wait_timeout;
  ctx.stop_requested = [this] { return cohort_->stop_requested(); };
  ctx.resume_round = resume_round_;
  ctx.resume_state = std::move(resume_state_);
  ctx.round_retries = config_.round_retries;
  ctx.report_round = [this](uint32_t round, uint32_t total, Metrics line) { report(round, total, std::move(line)); };
  if (!config_.out_dir.empty() && strategy_->resumable()) {
    ctx.checkpoint = [this](uint32_t round, uint32_t total, const std::function<NamedTensors()>& state) {
      checkpoint(round, total, state);
    };
  }
  return ctx;
}

// One round's line: metrics.jsonl gets it whole (with the job's totals), the log a progress line.
void Coordinator::report(uint32_t round, uint32_t total, Metrics line) {
  Metrics full;
  full.emplace_back("strategy", config_.cohort.job.strategy);
  full.emplace_back("round", static_cast<int64_t>(round));
  full.insert(full.end(), line.begin(), line.end());
  full.emplace_back("bytes_up", static_cast<int64_t>(bytes_up()));
  full.emplace_back("bytes_down", static_cast<int64_t>(bytes_down()));
  for (const auto& b : cohort_->bytes_by_worker()) {
    full.emplace_back("bytes_up." + b.name, static_cast<int64_t>(b.up));
    full.emplace_back("bytes_down." + b.name, static_cast<int64_t>(b.down));
  }
  full.emplace_back("peak_rss_bytes", static_cast<int64_t>(peak_rss_bytes()));
  full.emplace_back("elapsed_s", elapsed());
  recorder_->record_round(full);
  std::string scores;
  for (const char* key : {"test_accuracy", "test_rmse", "test_loss", "train_loss"}) {
    if (const MetricValue* v = find_metric(full, key)) scores += fmt::format("  {} {}", key, format_metric(*v));
  }
  // The privacy spent so far (fedavg.dp), beside the scores it was spent for.
  if (const MetricValue* eps = find_metric(full, "dp_epsilon")) scores += "  dp_epsilon " + format_metric(*eps);
  const MetricValue* ok = find_metric(full, "workers_ok");
  const MetricValue* failed = find_metric(full, "workers_failed");
  // Asynchronous strategies report server updates, not rounds; a simulated fleet its clock.
  const char* unit = find_metric(full, "updates_applied") ? "update" : "round";
  if (const MetricValue* v = find_metric(full, "virtual_time_s")) {
    if (std::holds_alternative<double>(*v) && std::get<double>(*v) > 0) {
      scores += fmt::format("  simulated {:.1f} s", std::get<double>(*v));
    }
  }
  spdlog::info("{} {}/{}{}  workers {} ok/{} failed  up {}  down {}  {:.1f} s", unit, round, total,
               scores, ok ? format_metric(*ok) : "?", failed ? format_metric(*failed) : "?",
               transport::format_bytes(bytes_up()), transport::format_bytes(bytes_down()), elapsed());
}

int Coordinator::run() {
  started_ = Clock::now();
  last_checkpoint_ = {resume_round_, started_};
  RunSummary summary;
  summary.strategy = config_.cohort.job.strategy;
  summary.config = all_options();
  RunContext ctx = context();
  int code = 0;
  try {
    spdlog::info("waiting for {} worker(s) (up to {} s)", config_.min_workers,
                 config_.wait_timeout.count() / 1000.0);
    if (!cohort_->wait_for_workers(config_.min_workers, Clock::now() + config_.wait_timeout)) {
      if (cohort_->stop_requested()) FEDRA_FAIL("interrupted while waiting for workers");
      FEDRA_THROW(ErrorKind::kOverloaded,
                  "only {} of {} workers connected within {} s; start more workers, check their "
                  "--connect address and token, or raise --wait-timeout",
                  cohort_->size(), config_.min_workers, config_.wait_timeout.count() / 1000.0);
    }
    for (const auto& w : cohort_->workers()) summary.workers.push_back(w.name);
    strategy_->run(*cohort_, ctx);
    summary.status = "completed";
  } catch (const std::exception& e) {
    // A stop that says why (StopSignal::fail, e.g. simulate's workers all gone) is a failure.
    const std::string failure = config_.cohort.stop ? config_.cohort.stop->failure() : std::string();
    const bool interrupted = cohort_->stop_requested() && failure.empty();
    summary.status = interrupted ? "interrupted" : "failed";
    summary.error = failure.empty() ? e.what() : failure;
    code = interrupted ? 130 : 1;
    spdlog::error("job {}: {}", summary.status, summary.error);
  }
  return finish(summary, code);
}

int Coordinator::finish(RunSummary& summary, int code) {
  cohort_->shutdown(summary.status == "completed" ? "job completed" : "job " + summary.status + ": " + summary.error,
                    std::chrono::seconds(5));
  summary.elapsed_s = elapsed();
  summary.bytes_up = bytes_up();
  summary.bytes_down = bytes_down();
  summary.peak_receive_bytes = cohort_->peak_receive_bytes();
  summary.peak_rss_bytes = peak_rss_bytes();
  try {
    recorder_->write_summary(summary);
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    code = code == 0 ? 1 : code;
  }
  if (code == 0) {
    spdlog::info("job completed in {:.1f} s; up {}  down {}{}", summary.elapsed_s,
                 transport::format_bytes(summary.bytes_up), transport::format_bytes(summary.bytes_down),
                 config_.out_dir.empty() ? std::string() : "; results in " + config_.out_dir);
  }
  return code;
}

}  // namespace fedra
