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
  if (!config_.test_data.empty()) {
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
  if (!config_.resume && !config_.out_dir.empty()) {
    // A forgotten --resume must not cost the checkpoint: a fresh run would overwrite it.
    const std::string state_path = config_.out_dir + "/checkpoint/state.json";
    FEDRA_REQUIRE(!std::filesystem::exists(state_path),
                  "{} holds the checkpoint of an earlier run ({}); continue it with --resume {}, or give another "
                  "--out (delete {}/checkpoint to start over there)",
                  config_.out_dir, state_path, config_.out_dir, config_.out_dir);
  }
  if (config_.resume) {
    FEDRA_REQUIRE(!config_.out_dir.empty(), "--resume needs the run's directory");
    {
      // A run that completed has nothing to resume; waiting for workers and then writing a failed
      // summary over the completed one would only lose its record.
      std::ifstream done(config_.out_dir + "/summary.json");
      nlohmann::json summary;
      if (done.good()) {
        try {
          summary = nlohmann::json::parse(done);
        } catch (const nlohmann::json::exception&) {
        }
      }
      bool same_options = summary.is_object() && summary.contains("config") && summary["config"].is_object();
      if (same_options) {
        for (const auto& [key, value] : all_options()) {
          if (key != "out" && key != "resume" && key != "log-level" &&
              summary["config"].value(key, std::string("(unset)")) != value) {
            same_options = false;
          }
        }
      }
      FEDRA_REQUIRE(!(same_options && summary.value("status", std::string()) == "completed"),
                    "the run in {} completed with these options (its summary.json says so): there is nothing to "
                    "resume; to train further raise its rounds (e.g. --fedavg.rounds), or start a new run with "
                    "another --out",
                    config_.out_dir);
    }
    FEDRA_REQUIRE(strategy_->resumable(),
                  "strategy '{}' keeps no checkpoints, so it cannot resume (every built-in strategy does; a plugin's "
                  "says so with resumable(); see docs/running.md)",
                  job.strategy);
    const std::string state_path = config_.out_dir + "/checkpoint/state.json";
    std::ifstream in(state_path);
    FEDRA_REQUIRE(in.good(), "cannot resume: '{}' does not exist (no round of that run completed, or it was "
                  "not a run of a strategy that checkpoints)", state_path);
    nlohmann::json state;
    try {
      state = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      FEDRA_FAIL("cannot resume: '{}' is not valid JSON: {}", state_path, e.what());
    }
    for (const auto& [key, want] : {std::pair<std::string, std::string>{"strategy", job.strategy},
                                    {"model", job.model}, {"seed", std::to_string(job.seed)}}) {
      const std::string had = state.value(key, std::string());
      FEDRA_REQUIRE(had == want, "cannot resume: the checkpoint's {} is '{}', this run's is '{}'", key, had, want);
    }
    std::vector<std::string> changed;
    if (state.contains("config") && state["config"].is_object()) {
      for (const auto& [key, value] : all_options()) {
        const std::string before = state["config"].value(key, std::string("(unset)"));
        if (before != value && key != "out" && key != "resume" && key != "log-level") {
          changed.push_back(fmt::format("{} {} -> {}", key, before, value));
        }
      }
    }
    if (!changed.empty()) {
      spdlog::warn("resuming with options that differ from the checkpointed run: {}", fmt::join(changed, ", "));
    }
    resume_round_ = state.value("round", 0u);
    // Totals carry on from the checkpoint (metrics.jsonl and summary.json report the whole job).
    up_offset_ = state.value("bytes_up", uint64_t{0});
    down_offset_ = state.value("bytes_down", uint64_t{0});
    elapsed_offset_ = state.value("elapsed_s", 0.0);
    resume_state_ = load_model_file(config_.out_dir + "/checkpoint/" + state.value("state_file", std::string()));
    // Per-step losses of the rounds after the checkpoint run again: their rows go.
    keep_csv_rounds(config_.out_dir + "/losses.csv", resume_round_);
    spdlog::info("resuming {} from its checkpoint after round {}", config_.out_dir, resume_round_);
  }
  recorder_ = std::make_unique<RunRecorder>(config_.out_dir, config_.resume ? int64_t{resume_round_} : -1);
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

int Coordinator::run() {
  const auto t0 = Clock::now();
  // Since the job began: a resumed run adds what its checkpoint recorded.
  auto elapsed = [&] { return elapsed_offset_ + std::chrono::duration<double>(Clock::now() - t0).count(); };
  auto bytes_up = [&] { return up_offset_ + cohort_->bytes_up(); };
  auto bytes_down = [&] { return down_offset_ + cohort_->bytes_down(); };
  RunSummary summary;
  summary.strategy = config_.cohort.job.strategy;
  summary.config = all_options();

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
  if (!config_.out_dir.empty() && strategy_->resumable()) {
    // The state goes to a file of its round first, then state.json names it (both written
    // atomically: temporary file, fsync, rename, fsync of the directory), then state files
    // beyond the newest checkpoint_keep go. A crash at any point leaves a state.json that names a
    // complete file.
    ctx.checkpoint = [this, last = resume_round_, last_time = Clock::now(), elapsed, bytes_up, bytes_down](
                         uint32_t round, uint32_t total, const std::function<NamedTensors()>& state) mutable {
      const uint32_t every = config_.checkpoint_every;
      const double seconds = config_.checkpoint_seconds;
      const bool due = round >= total || (every > 0 && round % every == 0) ||
                       (seconds > 0 && Seconds(Clock::now() - last_time).count() >= seconds);
      if (!due) return;
      const std::string dir = config_.out_dir + "/checkpoint";
      const std::string file = fmt::format("round-{}.bin", round);
      std::error_code ec;
      try {
        std::filesystem::create_directories(dir, ec);
        FEDRA_REQUIRE(!ec, "cannot create '{}': {}", dir, ec.message());
        save_model_file(dir + "/" + file, state());
        nlohmann::ordered_json j;
        j["round"] = round;
        j["state_file"] = file;
        j["strategy"] = config_.cohort.job.strategy;
        j["model"] = config_.cohort.job.model;
        j["seed"] = std::to_string(config_.cohort.job.seed);
        j["config"] = all_options();
        j["bytes_up"] = bytes_up();
        j["bytes_down"] = bytes_down();
        j["elapsed_s"] = elapsed();
        write_file_atomically(dir + "/state.json", j.dump(2) + "\n");
      } catch (const Error& e) {
        // A full disk or an unwritable directory: say what is still safe and how to go on.
        std::filesystem::remove(dir + "/" + file, ec);  // not named by state.json: only takes room
        FEDRA_THROW(e.kind(), "the checkpoint of round {} failed: {}; {}", round, e.what(),
                    last > 0 ? fmt::format("the checkpoint of round {} is intact: make room, then continue "
                                           "with --resume {}", last, config_.out_dir)
                             : std::string("no checkpoint was written yet"));
      }
      last = round;
      last_time = Clock::now();
      // Keep the newest checkpoint_keep state files (by round); a resumed run's later files
      // from before its crash (rounds above this one) go too.
      std::vector<std::pair<uint32_t, std::filesystem::path>> files;
      for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
        const std::string name = e.path().filename().string();
        unsigned r = 0;
        if (std::sscanf(name.c_str(), "round-%u.bin", &r) == 1 && name == fmt::format("round-{}.bin", r)) {
          files.emplace_back(r, e.path());
        }
      }
      std::sort(files.begin(), files.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
      size_t kept = 0;
      for (const auto& [r, path] : files) {
        if (r <= round && kept < std::max<uint32_t>(1, config_.checkpoint_keep)) {
          ++kept;
        } else {
          std::filesystem::remove(path, ec);
        }
      }
    };
  }
  ctx.report_round = [&](uint32_t round, uint32_t total, Metrics line) {
    Metrics full;
    full.emplace_back("strategy", ctx.job.strategy);
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
  };

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
