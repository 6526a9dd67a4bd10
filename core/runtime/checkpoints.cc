// The coordinator's checkpoints (core/runtime/coordinator.h): written after the rounds that are
// due, read back by --resume.
//
// A checkpoint is the strategy's state in a file of its round (OUT/checkpoint/round-N.bin, a
// model file), then OUT/checkpoint/state.json naming it, with the job's identity, every resolved
// option and the totals so far; both written atomically (temporary file, fsync, rename, fsync of
// the directory), so a crash at any point leaves a state.json that names a complete file. State
// files beyond the newest checkpoint_keep go.
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <fmt/ranges.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "core/model/state.h"
#include "core/runtime/coordinator.h"
#include "core/system/files.h"

namespace fedra {

namespace {

bool ignored_on_resume(const std::string& key) { return key == "out" || key == "resume" || key == "log-level"; }

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  if (!in.good()) return nullptr;
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception&) {
    return nullptr;
  }
}

}  // namespace

void Coordinator::checkpoint(uint32_t round, uint32_t total, const std::function<NamedTensors()>& state) {
  const uint32_t every = config_.checkpoint_every;
  const double seconds = config_.checkpoint_seconds;
  const bool due = round >= total || (every > 0 && round % every == 0) ||
                   (seconds > 0 && Seconds(Clock::now() - last_checkpoint_.second).count() >= seconds);
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
    const uint32_t last = last_checkpoint_.first;
    FEDRA_THROW(e.kind(), "the checkpoint of round {} failed: {}; {}", round, e.what(),
                last > 0 ? fmt::format("the checkpoint of round {} is intact: make room, then continue "
                                       "with --resume {}", last, config_.out_dir)
                         : std::string("no checkpoint was written yet"));
  }
  last_checkpoint_ = {round, Clock::now()};
  prune_checkpoints(dir, round);
}

// Keeps the newest checkpoint_keep state files (by round); a resumed run's later files from before
// its crash (rounds above this one) go too.
void Coordinator::prune_checkpoints(const std::string& dir, uint32_t round) const {
  std::error_code ec;
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
}

// A run that completed has nothing to resume; waiting for workers and then writing a failed
// summary over the completed one would only lose its record.
void Coordinator::refuse_completed_run() const {
  const nlohmann::json summary = read_json(config_.out_dir + "/summary.json");
  bool same_options = summary.is_object() && summary.contains("config") && summary["config"].is_object();
  if (same_options) {
    for (const auto& [key, value] : all_options()) {
      if (!ignored_on_resume(key) && summary["config"].value(key, std::string("(unset)")) != value) same_options = false;
    }
  }
  FEDRA_REQUIRE(!(same_options && summary.value("status", std::string()) == "completed"),
                "the run in {} completed with these options (its summary.json says so): there is nothing to "
                "resume; to train further raise its rounds (e.g. --fedavg.rounds), or start a new run with "
                "another --out",
                config_.out_dir);
}

void Coordinator::read_checkpoint() {
  const Job& job = config_.cohort.job;
  FEDRA_REQUIRE(!config_.out_dir.empty(), "--resume needs the run's directory");
  refuse_completed_run();
  FEDRA_REQUIRE(strategy_->resumable(),
                "strategy '{}' keeps no checkpoints, so it cannot resume (every built-in strategy does; a plugin's "
                "says so with resumable(); see docs/running.md)",
                job.strategy);
  const std::string state_path = config_.out_dir + "/checkpoint/state.json";
  std::ifstream in(state_path);
  FEDRA_REQUIRE(in.good(), "nothing to resume in {}: it holds no checkpoint ({} is missing: the run ended "
                "before its first checkpoint, or the directory is not a run's). Start the run afresh: the same "
                "command without --resume, with --out {} (its files are replaced) or another --out",
                config_.out_dir, state_path, config_.out_dir);
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
      if (before != value && !ignored_on_resume(key)) changed.push_back(fmt::format("{} {} -> {}", key, before, value));
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

}  // namespace fedra
