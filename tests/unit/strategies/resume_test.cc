// Checkpoint, resume and round retries of the step-driven strategies, in one process
// (LocalCohort): a coordinator "killed" after a checkpoint and resumed, or a worker lost mid-round
// and restarted under its name, must end with the uninterrupted run's weights, bit for bit, and
// count every round once.
#include "tests/testing.h"

#include <map>
#include <optional>

#include <torch/torch.h>

#include "core/model/model.h"
#include "strategies/builtin.h"
#include "tests/support/local_cohort.h"
#include "tests/test_util.h"

using namespace fedra;
using namespace fedra::test;

namespace {

constexpr uint64_t kSeed = 7;
const char* kData = "synthetic:n=240,features=16,classes=2,seed=3";

Job job_of(const std::string& strategy, const std::string& model, const std::string& loss,
           std::map<std::string, std::string> options) {
  return make_job(strategy, model, loss, std::move(options), kSeed);
}

std::vector<LocalWorker> iid_workers(const std::string& data, int64_t n) { return test::iid_workers(data, n, kSeed); }

// The LocalCohort, with one fault: from the `at`-th message (part or reply) of its exchanges on,
// at the first part, or reply of another worker, while `victim` still owes its reply, it vanishes
// as a killed process would (so its request fails mid-round) and, with `comes_back`, a fresh
// worker of that name connects at once (a restarted process).
class FaultyCohort : public Cohort {
 public:
  FaultyCohort(LocalCohort& inner, std::string victim, int at, bool comes_back)
      : inner_(inner), victim_(std::move(victim)), at_(at), comes_back_(comes_back) {}

  std::string local_address() const override { return inner_.local_address(); }
  size_t size() const override { return inner_.size(); }
  std::vector<WorkerInfo> workers() const override { return inner_.workers(); }
  bool wait_for_workers(size_t n, Deadline d) override { return inner_.wait_for_workers(n, d); }
  bool post(WorkerId w, const Message& m) override { return inner_.post(w, m); }
  void cancel(WorkerId w, const std::string& reason) override { inner_.cancel(w, reason); }
  std::vector<WorkerBytes> bytes_by_worker() const override { return inner_.bytes_by_worker(); }
  std::vector<Failure> exchange(std::vector<Instruction> instructions, const Exchange& handlers) override {
    Exchange ex = handlers;
    bool victim_asked = false;
    for (const auto& w : inner_.workers()) {
      for (const auto& ins : instructions) victim_asked |= w.id == ins.worker && w.name == victim_;
    }
    auto fire = [this] {
      fired_ = true;
      inner_.disconnect(victim_);
      if (comes_back_) inner_.rejoin(victim_);
    };
    // Past the at_-th message, the victim's reply may have come first in every later round (psl:
    // one reply per worker per round, in thread order); then it is lost as the next round starts.
    if (seen_ >= at_ && !fired_ && victim_asked) fire();
    auto count = [&, this](const WorkerInfo& w, bool reply) {
      if (++seen_ < at_ || fired_ || !victim_asked || (reply && w.name == victim_)) return;
      fire();
    };
    ex.on_part = [&](const WorkerInfo& w, Message&& m) {
      count(w, false);
      if (handlers.on_part) handlers.on_part(w, std::move(m));
    };
    ex.on_reply = [&](const WorkerInfo& w, Message&& m) {
      count(w, true);
      if (w.name == victim_) victim_asked = false;  // its request is over: losing it now fails nothing
      handlers.on_reply(w, std::move(m));
    };
    ex.on_failure = [&](const Failure& f) {
      if (f.name == victim_) ++victim_failures_;
      if (handlers.on_failure) handlers.on_failure(f);
    };
    return inner_.exchange(std::move(instructions), ex);
  }
  bool fired() const { return fired_; }
  int victim_failures() const { return victim_failures_; }

 private:
  LocalCohort& inner_;
  std::string victim_;
  int at_;
  bool comes_back_;
  int seen_ = 0;
  bool fired_ = false;
  int victim_failures_ = 0;
};

struct Killed {};  // the coordinator process "dies": thrown past the strategy

struct Outcome {
  std::vector<Metrics> lines;
  NamedTensors model;
  std::vector<uint32_t> checkpointed;  // rounds whose state was written
};

struct Scenario {
  Job job;
  std::vector<LocalWorker> workers;
  std::string dataset;  // the coordinator's (psl data=coordinator)
};

// One coordinator run. kill_after > 0: dies right after checkpointing that round, leaving the
// checkpoint file in `dir`. resume: starts from that file. fault: a worker lost mid-round.
Outcome run(const Scenario& s, const TempDir& dir, uint32_t kill_after = 0, bool resume = false,
            std::optional<std::pair<int, bool>> fault = std::nullopt, int retries = 0) {
  StrategyRegistry registry;
  register_builtin_strategies(registry);
  auto coordinator = registry.get(s.job.strategy).make_coordinator(s.job);
  LocalCohort local(s.job, registry, s.workers);
  FaultyCohort faulty(local, s.workers.back().name, fault ? fault->first : 0, fault && fault->second);
  Cohort& cohort = fault ? static_cast<Cohort&>(faulty) : local;
  Outcome out;
  RunContext ctx;
  ctx.job = s.job;
  ctx.dataset = s.dataset;
  ctx.out_dir = dir.path();
  ctx.wait_timeout = std::chrono::milliseconds(500);
  ctx.round_retries = retries;
  ctx.report_round = [&](uint32_t, uint32_t, Metrics m) { out.lines.push_back(std::move(m)); };
  const std::string file = dir / "state.bin";
  ctx.checkpoint = [&](uint32_t round, uint32_t, const std::function<NamedTensors()>& state) {
    save_model_file(file, state());
    save_model_file(dir / "round", {{"round", at::tensor({static_cast<int64_t>(round)})}});
    out.checkpointed.push_back(round);
    if (round == kill_after) throw Killed{};
  };
  if (resume) {
    ctx.resume_state = load_model_file(file);
    ctx.resume_round = static_cast<uint32_t>(load_model_file(dir / "round").front().second.item<int64_t>());
  }
  try {
    coordinator->run(cohort, ctx);
  } catch (const Killed&) {
    return out;
  }
  if (fault) {
    CHECK(faulty.fired());
    CHECK(faulty.victim_failures() >= 1);  // it was lost with its request pending: the round failed
  }
  out.model = load_model_file(dir / "model.bin");
  return out;
}

template <class T>
std::optional<T> metric(const Metrics& line, const std::string& name) {
  for (const auto& [k, v] : line) {
    if (k == name) return std::get<T>(v);
  }
  return std::nullopt;
}

std::map<std::string, Scenario> scenarios() {
  std::map<std::string, Scenario> all;
  // Momentum everywhere: the optimisers' state has to come back too, not only the weights.
  all["gradsum"] = {job_of("gradsum", "mlp:16-32-1", "bce",
                           {{"steps", "12"}, {"steps_per_round", "3"}, {"batch_size", "16"}, {"lr", "0.1"},
                            {"momentum", "0.9"}, {"bucket_kb", "1"}, {"eval_every", "0"}}),
                    iid_workers(kData, 2), ""};
  for (const std::string labels : {"coordinator", "worker"}) {
    all["split labels=" + labels] = {job_of("split", "mlp:16-32-16-1,cut=relu1", "bce",
                                            {{"epochs", "4"}, {"batch_size", "16"}, {"lr", "0.1"}, {"momentum", "0.9"},
                                             {"labels", labels}, {"eval_every", "0"}}),
                                     iid_workers(kData, 2), ""};
  }
  all["psl"] = {job_of("psl", "psnet:classes=4", "psl",
                       {{"steps", "4"}, {"steps_per_round", "1"}, {"batch_size", "40"}, {"optimizer", "adam"},
                        {"lr", "0.01"}, {"eval_every", "0"}}),
                iid_workers("synthetic:n=10", 3), "fmnist:limit=160"};
  for (const std::string strategy : {"tensor", "pipeline"}) {
    all[strategy] = {job_of(strategy, "mlp:16-8-6-4-1", "bce",
                            {{"steps", "8"}, {"steps_per_round", "2"}, {"batch_size", "16"}, {"lr", "0.1"},
                             {"momentum", "0.9"}, {"eval_every", "0"}}),
                     iid_workers(kData, 2), ""};
  }
  return all;
}

}  // namespace

TEST_CASE("every step-driven strategy: a coordinator killed after a checkpoint resumes to the same weights, bit for bit") {
  for (const auto& [name, s] : scenarios()) {
    INFO(name);
    TempDir ref_dir, dir;
    const Outcome ref = run(s, ref_dir);
    REQUIRE(ref.lines.size() == 4);
    REQUIRE(ref.checkpointed == std::vector<uint32_t>{1, 2, 3, 4});
    const Outcome first = run(s, dir, 2);
    CHECK(first.lines.size() == 2);
    const Outcome resumed = run(s, dir, 0, true);
    // Rounds 3 and 4 only, each once, with the uninterrupted run's losses.
    REQUIRE(resumed.lines.size() == 2);
    for (size_t i = 0; i < 2; ++i) {
      CHECK(metric<double>(resumed.lines[i], "train_loss") == metric<double>(ref.lines[i + 2], "train_loss"));
      CHECK(metric<int64_t>(resumed.lines[i], "first_step") == metric<int64_t>(ref.lines[i + 2], "first_step"));
    }
    CHECK(identical(resumed.model, ref.model));
    CHECK(max_diff(ref.model, model_state(*build_model(s.job.model, kSeed))) > 1e-3);  // it trained
  }
}

TEST_CASE("every step-driven strategy: a worker lost mid-round and restarted under its name; the round reruns") {
  for (const auto& [name, s] : scenarios()) {
    INFO(name);
    TempDir ref_dir, dir, lost_dir;
    const Outcome ref = run(s, ref_dir);
    // From the 9th message the coordinator reads on (round 1 to 3, depending on the strategy).
    const Outcome retried = run(s, dir, 0, false, std::make_pair(9, true), 1);
    REQUIRE(retried.lines.size() == 4);
    for (size_t i = 0; i < 4; ++i) {
      CHECK(metric<double>(retried.lines[i], "train_loss") == metric<double>(ref.lines[i], "train_loss"));
    }
    CHECK(identical(retried.model, ref.model));
    // Without retries the job fails, naming the lost worker.
    CHECK_THROWS_WITH_AS(run(s, lost_dir, 0, false, std::make_pair(9, false), 0),
                         doctest::Contains(s.workers.back().name.c_str()), Error);
  }
}

TEST_CASE("a retry waits for the lost worker, then goes on without it if it does not come back") {
  const Scenario s = scenarios().at("gradsum");
  TempDir dir;
  // gradsum needs 1 worker (min_workers): the rerun goes on with worker-0 alone after 500 ms.
  const Outcome alone = run(s, dir, 0, false, std::make_pair(9, false), 1);
  REQUIRE(alone.lines.size() == 4);
  CHECK(metric<int64_t>(alone.lines.back(), "workers_asked") == 1);
}
