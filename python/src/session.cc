#include "python/src/session.h"

#include "python/src/names.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <thread>

#include <spdlog/sinks/base_sink.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include "core/data/tensor_checks.h"
#include "core/kit/registry.h"
#include "core/model/state.h"
#include "core/system/process.h"
#include "strategies/builtin.h"

namespace fedra::python {

namespace {

// The session whose worker runs on this thread: where its error lines are kept.
thread_local Session* current = nullptr;

// Keeps the last error-level line each worker logs, for the exception Python sees when it ends.
class LastError : public spdlog::sinks::base_sink<std::mutex> {
 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    if (msg.level >= spdlog::level::err && current != nullptr) {
      current->set_last_error(std::string(msg.payload.data(), msg.payload.size()));
    }
  }
  void flush_() override {}
};

}  // namespace

void use_logging(const std::string& level) {
  static std::mutex mu;
  static std::shared_ptr<spdlog::logger> logger;
  const auto lvl = spdlog::level::from_str(level);
  FEDRA_REQUIRE(lvl != spdlog::level::off || level == "off",
                "unknown log level '{}'; use trace, debug, info, warn or error", level);
  std::lock_guard<std::mutex> lock(mu);
  if (!logger) {
    std::vector<spdlog::sink_ptr> sinks{std::make_shared<spdlog::sinks::stderr_sink_mt>(), std::make_shared<LastError>()};
    logger = std::make_shared<spdlog::logger>("fedra", sinks.begin(), sinks.end());
    logger->set_pattern("[%H:%M:%S.%e] [%n] %l: %v");
    logger->flush_on(spdlog::level::trace);
    spdlog::set_default_logger(logger);
  }
  logger->set_level(lvl);
}

std::shared_ptr<Session> Session::start(WorkerConfig config, const std::string& log_level) {
  std::shared_ptr<Session> s(new Session());
  use_logging(log_level);
  tune_allocator();  // as `fedra worker` runs: a big model's buffers are reused, not mmapped afresh each round
  config.trainer = s.get();
  std::thread([s, config = std::move(config)] {
    current = s.get();
    int code = 1;
    try {
      StrategyRegistry registry;
      register_builtin_strategies(registry);
      code = run_worker(config, registry);
    } catch (const std::exception& e) {
      spdlog::error("{}", e.what());
    }
    std::lock_guard<std::mutex> lock(s->mu_);
    s->ended_ = true;
    s->code_ = code;
    s->cv_.notify_all();
  }).detach();  // the thread holds `s`; the job's end ends it
  return s;
}

LocalOutcome Session::train(const LocalRequest& request, torch::nn::Sequential& model, const TrainOptions& options) {
  FEDRA_REQUIRE(options.grad_correction.empty(),
                "scaffold corrects every gradient step inside the training loop, and this worker's loop is the "
                "user's own (Python): run scaffold with C++ workers, or use another FedAvg variant");
  const std::shared_ptr<Task> task = hand_over(request, model, options);
  load_model_state(*model, task->weights);
  return task->outcome;
}

EvalStats Session::evaluate(const LocalRequest& request, torch::nn::Sequential& model) {
  TrainOptions options;  // what Python's task.config shows: the job's loss above all
  options.loss = request.job.loss;
  return hand_over(request, model, options)->evaluation;
}

std::shared_ptr<Task> Session::hand_over(const LocalRequest& request, torch::nn::Sequential& model,
                                         TrainOptions options) {
  auto task = std::make_shared<Task>();
  task->job = request.job;
  task->kind = request.kind;
  task->round = request.round;
  task->model = model_state(*model);
  task->prefix = prefix_of(request.job.model, task->model);
  task->options = std::move(options);
  if (request.data != nullptr && request.data->size() > 0) {
    task->inputs = request.data->inputs;
    task->targets = request.data->targets;
  }
  std::unique_lock<std::mutex> lock(mu_);
  FEDRA_REQUIRE(!closed_, "the Python side of this worker has closed it");
  queue_.push_back(task);
  cv_.notify_all();
  cv_.wait(lock, [&] { return task->state != Task::State::kOpen; });
  if (task->state == Task::State::kFailed) FEDRA_FAIL("{}", task->failure);
  return task;
}

std::shared_ptr<Task> Session::next(std::chrono::milliseconds wait) {
  std::unique_lock<std::mutex> lock(mu_);
  if (open_ && open_->state == Task::State::kOpen) {
    finish(*open_, Task::State::kFailed,
           fmt::format("the Python loop asked for the next task without answering this one ('{}', round {})",
                       open_->kind, open_->round));
  }
  open_.reset();
  cv_.wait_for(lock, wait, [&] { return !queue_.empty() || ended_; });
  if (queue_.empty()) return nullptr;
  open_ = queue_.front();
  queue_.pop_front();
  return open_;
}

void Session::reply(Task& task, const NamedTensors& weights, LocalOutcome outcome) {
  answer(task, [&](Task& t) {
    FEDRA_REQUIRE(t.kind != "fedavg.evaluate", "this is an evaluation task: answer it with "
                  "task.reply_evaluation(num_examples=..., loss=..., correct=...)");
    FEDRA_REQUIRE(outcome.num_examples > 0, "the reply's num_examples is {}; it must be > 0 (the update's weight)",
                  outcome.num_examples);
    for (const auto& [name, value] : outcome.metrics) {
      FEDRA_REQUIRE(!name.empty() && std::all_of(name.begin(), name.end(), [](char c) {
                      return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
                    }), "the reply's metric '{}': a metric's name is letters, digits and _", name);
      FEDRA_REQUIRE(std::isfinite(value), "the reply's metric '{}' is {}; it must be finite", name, value);
    }
    NamedTensors ordered = in_model_order(t.model, weights, t.job.model, t.prefix, "the reply");
    check_layout(t.model, ordered);
    check_finite(ordered);
    t.weights = std::move(ordered);
    t.outcome = outcome;
  });
}

void Session::reply_evaluation(Task& task, const EvalStats& figures) {
  answer(task, [&](Task& t) {
    FEDRA_REQUIRE(t.kind == "fedavg.evaluate", "this is a training task ('{}'): answer it with task.reply(state, ...)",
                  t.kind);
    FEDRA_REQUIRE(figures.examples > 0, "the evaluation's num_examples is {}; it must be > 0", figures.examples);
    FEDRA_REQUIRE(std::isfinite(figures.loss), "the evaluation's loss is {}; it must be finite", figures.loss);
    FEDRA_REQUIRE(figures.correct >= 0 && figures.correct <= figures.examples,
                  "the evaluation's correct is {}: it must be in [0, num_examples = {}]", figures.correct,
                  figures.examples);
    t.evaluation = figures;
  });
}

// Checks and fills the answer (`fill` throws Error on a wrong one: the task then fails with that
// reason, and the error goes on to Python), then wakes the worker thread.
void Session::answer(Task& task, const std::function<void(Task&)>& fill) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    FEDRA_REQUIRE(task.state == Task::State::kOpen, "this task ('{}', round {}) is already {}", task.kind, task.round,
                  task.state == Task::State::kReplied ? "answered" : "failed: " + task.failure);
  }
  try {
    fill(task);
  } catch (const Error& e) {
    fail(task, e.what());
    throw;
  }
  std::lock_guard<std::mutex> lock(mu_);
  FEDRA_REQUIRE(task.state == Task::State::kOpen, "this task ('{}', round {}) failed while it was answered: {}",
                task.kind, task.round, task.failure);
  finish(task, Task::State::kReplied, "");
}

void Session::fail(Task& task, const std::string& why) {
  std::lock_guard<std::mutex> lock(mu_);
  if (task.state == Task::State::kOpen) finish(task, Task::State::kFailed, why);
}

void Session::finish(Task& task, Task::State state, std::string failure) {
  task.state = state;
  task.failure = std::move(failure);
  cv_.notify_all();
}

void Session::close() {
  std::lock_guard<std::mutex> lock(mu_);
  closed_ = true;
  const std::string why = "the Python side of this worker closed it";
  if (open_ && open_->state == Task::State::kOpen) finish(*open_, Task::State::kFailed, why);
  for (auto& t : queue_) finish(*t, Task::State::kFailed, why);
  queue_.clear();
}

bool Session::ended() const {
  std::lock_guard<std::mutex> lock(mu_);
  return ended_;
}

int Session::exit_code() const {
  std::lock_guard<std::mutex> lock(mu_);
  return code_;
}

std::string Session::last_error() const {
  std::lock_guard<std::mutex> lock(mu_);
  return last_error_;
}

void Session::set_last_error(std::string what) {
  std::lock_guard<std::mutex> lock(mu_);
  last_error_ = std::move(what);
}

}  // namespace fedra::python
