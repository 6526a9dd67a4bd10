// The coordinator half shared by the model-parallel strategies (tensor, pipeline): a fixed set
// of N workers, each holding a part of one model, trained in rounds of steps. Per round, one
// exchange: each worker gets its part (and its optimiser state) in a run request, the parts talk
// through the coordinator while the round runs, and each returns its trained part in its final
// reply. Between rounds the coordinator holds the whole model: it evaluates it, records the
// metrics line and, at the end, writes model.bin. A worker lost mid-round fails the round (no
// other worker holds its part); model.bin then holds the model of the last recorded round.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <torch/nn/modules/container/sequential.h>

#include "core/batching.h"
#include "core/cohort.h"
#include "core/optimizer.h"
#include "core/option_groups.h"
#include "core/script_model.h"
#include "core/stepped_strategy.h"
#include "core/strategy.h"
#include "strategies/run_message.h"

namespace fedra {

struct RoundPlan {
  std::string strategy;     // for messages: "tensor round 3 failed: ..."
  std::string part;         // what a worker holds, for messages: "rank", "stage"
  size_t parts = 1;         // workers taking part
  ScheduleOptions schedule;
  InitOptions init;         // how the whole model is drawn before it is cut into parts
  // A TorchScript model is taken as its top-level children run in order (script_chain), which
  // the strategy cuts like a spec's layers; false: the strategy refuses TorchScript models.
  bool script_children = false;
};

class ModelParallelCoordinator : public SteppedStrategy {
 protected:
  ModelParallelCoordinator(Job job, RoundPlan plan, EvalOptions eval);

  // One round of `steps`, `workers` in part order; on success the trained parts are in model_.
  // Returns the round's own metrics (the loop adds timing and evaluation).
  virtual Metrics run_parts(Cohort& cohort, const RunContext& ctx, const RoundSteps& steps,
                            const std::vector<WorkerInfo>& workers) = 0;

  // Runs one exchange with `workers` (part i = workers[i]): on_part(i, worker, message) sees every
  // partial message; the final replies, which must be of kind `done_kind`, come back in part
  // order. A failure cancels the other parts and throws, naming the worker and its part.
  using PartHandler = std::function<void(size_t part, const WorkerInfo& worker, Message&& message)>;
  std::vector<Message> exchange(Cohort& cohort, uint32_t round, const std::vector<WorkerInfo>& workers,
                                std::vector<Instruction> instructions, const char* done_kind, const PartHandler& on_part,
                                const std::string& why_fatal);
  // A final reply's tensors: the part's parameters, and its optimiser state ("opt/" names, the
  // prefix removed). "loss" and "examples" are left out.
  static std::pair<NamedTensors, NamedTensors> split_reply(const Message& reply);
  // Appends OUT/losses.csv from a reply carrying "loss" and "examples" and returns the metrics
  // every such round records (status, steps, train_loss of the first step, its mean, ...).
  Metrics loss_metrics(const RunContext& ctx, const RoundSteps& steps, const Message& reply,
                       const std::string& who) const;

  // Cuts model_ (just drawn as plan_.init says) into the strategy's parts.
  virtual void partition() = 0;

  // SteppedStrategy's hooks, the same for every model-parallel strategy.
  void prepare(const RunContext& ctx) final {
    model_ = is_torchscript(job().model) ? layered_model(job().model, job().seed, ctx.test_set)
                                          : initial_model(ctx, plan_.init);
    partition();
  }
  size_t workers_needed() const override { return plan_.parts; }
  void start(Cohort& cohort, const std::vector<WorkerInfo>& workers) override;
  StepPlan plan_steps(const std::vector<WorkerInfo>& workers) const override;
  Metrics run_round(Cohort& cohort, const RunContext& ctx, const RoundSteps& steps) override;
  torch::nn::Sequential model() const override { return model_; }
  bool save_on_failure() const override { return true; }
  // Between rounds the whole model and every part's optimiser state are here (workers get theirs
  // with each run request): "model/NAME", and "opt/PART/NAME" per part.
  NamedTensors state() const override;
  void restore(const NamedTensors& state) override;

  RoundPlan plan_;
  torch::nn::Sequential model_{nullptr};
  std::vector<NamedTensors> opt_state_;  // per part, between rounds

 private:
  // The first `parts` workers by name.
  std::vector<WorkerInfo> pick(const Cohort& cohort) const;
};

// The worker half they share: a run request brings this worker's part and its optimiser state;
// the worker trains it for the round's steps, talking to the other parts through its link, and
// returns it in its final reply.
class ModelParallelWorker : public WorkerStrategy {
 protected:
  ModelParallelWorker(const Job& job, ScheduleOptions schedule, OptimizerOptions optim);

  // Decodes the run request of `run_kind` and readies the run: the link, the step timeout, timers.
  RunIns begin(const Message& request, WorkerLink& link, const std::string& run_kind);
  // For the part that draws the batches: checks it has data ("worker NAME (WHO) has no training
  // data") and makes the batch order on first use.
  void draw_batches(const WorkerContext& ctx, const std::string& who);
  // Makes `params` (autograd leaves, named `names`) this part's parameters, stepped by a fresh
  // optimiser that resumes from `opt_state` when it is not empty.
  void set_params(std::vector<std::string> names, std::vector<at::Tensor> params, const NamedTensors& opt_state);
  // One optimiser step over every parameter's gradient (zeros where none), then clears them.
  void apply_gradients();
  // The final reply: this part's parameters and optimiser state, then `extra` (per-step losses).
  Message done(const std::string& kind, uint32_t round, NamedTensors extra = {}) const;

  Job job_;
  WorkerLink* link_ = nullptr;  // the link of the request being handled
  std::optional<BatchOrder> batches_;
  std::vector<std::string> names_;
  std::vector<at::Tensor> params_;
  std::optional<ParamOptimizer> optimizer_;
  std::chrono::milliseconds timeout_{60000};
  double compute_s_ = 0, wait_s_ = 0;

 private:
  ScheduleOptions schedule_;
  OptimizerOptions optim_;
};

}  // namespace fedra
