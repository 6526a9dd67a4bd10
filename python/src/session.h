// A worker whose local training is the user's own Python loop. The C++ worker runs on a thread of
// its own, exactly as `fedra worker` runs (connect with retry, hello, the job, every request, DP
// and secure aggregation around training, the replies); each time its strategy would train, it
// hands a Task to Python through a queue and waits for the answer. Nothing here touches Python:
// module.cc converts, and releases the interpreter lock while it waits.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "core/runtime/worker.h"
#include "core/training/local_trainer.h"

namespace fedra::python {

// One task, shared by the worker thread (which waits on it) and Python (which answers).
struct Task {
  Job job;
  std::string kind;  // the request's kind: "fedavg.fit", "async.train", "fedavg.evaluate"
  uint32_t round = 0;
  NamedTensors model;  // the global model, in the model's order: the worker's own tensors, no copy
  // prefix_of(names.h): what the worker's names have that the user's module's do not. Python sees
  // and gives the names without it.
  std::string prefix;
  TrainOptions options;
  at::Tensor inputs, targets;  // the worker's Fedra dataset, if it has one (no copy); else undefined

  enum class State { kOpen, kReplied, kFailed };
  State state = State::kOpen;
  NamedTensors weights;  // a training's answer, in the model's order
  LocalOutcome outcome;
  EvalStats evaluation;  // an evaluation's answer
  std::string failure;  // why it failed
};

// Fedra's log lines to stderr for every worker and coordinator of this process, at `level` (the
// last one given); a worker's error lines are also kept for its Session's last_error().
void use_logging(const std::string& level);

class Session : public LocalTrainer {
 public:
  // Starts the worker thread: it connects, says hello and waits for the job's requests. The thread
  // holds the session until the job ends.
  static std::shared_ptr<Session> start(WorkerConfig config, const std::string& log_level);

  // The next task, or null when none came within `wait` or the worker has ended (ended() tells).
  // A task handed out earlier and not answered fails first, saying so.
  std::shared_ptr<Task> next(std::chrono::milliseconds wait);
  // Hands the trained weights (by name, any order) to the worker. Throws Error saying what is wrong
  // (a tensor missing or extra, another dtype or shape, NaN or Inf, num_examples <= 0: the
  // coordinator's own checks and words); the task then fails with that reason and the worker
  // stays in the job.
  void reply(Task& task, const NamedTensors& weights, LocalOutcome outcome);
  // Hands an evaluation's figures (kind "fedavg.evaluate"). Throws Error on figures the coordinator
  // would refuse (examples <= 0, a loss that is not finite, correct outside [0, examples]); the
  // task then fails with that reason.
  void reply_evaluation(Task& task, const EvalStats& figures);
  // Fails the task with `why` (sent to the coordinator); the worker stays in the job.
  void fail(Task& task, const std::string& why);
  // Fails an open task and tells later ones the Python side is gone.
  void close();

  bool ended() const;
  int exit_code() const;
  // The last error the worker logged (why it ended, when it ended badly).
  std::string last_error() const;
  void set_last_error(std::string what);

  LocalOutcome train(const LocalRequest& request, torch::nn::Sequential& model, const TrainOptions& options) override;
  EvalStats evaluate(const LocalRequest& request, torch::nn::Sequential& model) override;

 private:
  Session() = default;
  // A task for `request` with the model's tensors; hands it to Python and waits for the answer
  // (throws Error with the reason if it failed).
  std::shared_ptr<Task> hand_over(const LocalRequest& request, torch::nn::Sequential& model, TrainOptions options);
  void answer(Task& task, const std::function<void(Task&)>& fill);
  void finish(Task& task, Task::State state, std::string failure);

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Task>> queue_;
  std::shared_ptr<Task> open_;  // handed to Python, not yet answered
  bool ended_ = false;
  bool closed_ = false;
  int code_ = 0;
  std::string last_error_;
};

}  // namespace fedra::python
