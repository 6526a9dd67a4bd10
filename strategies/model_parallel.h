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
#include <string>
#include <utility>
#include <vector>

#include <torch/nn/modules/container/sequential.h>

#include "core/cohort.h"
#include "core/strategy.h"

namespace fedra {

struct RoundPlan {
  std::string strategy;     // for messages: "tensor round 3 failed: ..."
  std::string part;         // what a worker holds, for messages: "rank", "stage"
  size_t parts = 1;         // workers taking part
  int64_t steps = 0;        // 0: epochs passes over the first worker's data
  int64_t epochs = 1;
  int64_t steps_per_round = 0;  // 0: one epoch
  int64_t batch_size = 32;
  int64_t eval_every = 1;
  double step_timeout_s = 60;

  // From a strategy's options with steps(), epochs(), steps_per_round(), batch_size(),
  // eval_every() and step_timeout().
  template <class Options>
  static RoundPlan from(const Options& o, std::string strategy, std::string part, int64_t parts) {
    RoundPlan p;
    p.strategy = std::move(strategy);
    p.part = std::move(part);
    p.parts = static_cast<size_t>(parts);
    p.steps = o.steps();
    p.epochs = o.epochs();
    p.steps_per_round = o.steps_per_round();
    p.batch_size = o.batch_size();
    p.eval_every = o.eval_every();
    p.step_timeout_s = o.step_timeout();
    return p;
  }
};

class ModelParallelCoordinator : public CoordinatorStrategy {
 public:
  void run(Cohort& cohort, RunContext& ctx) final;

 protected:
  ModelParallelCoordinator(Job job, RoundPlan plan);

  // Builds model_ (and whatever splits it); once, before the workers are awaited.
  virtual void prepare(const RunContext& ctx) = 0;
  // The plan line logged once the step counts are known.
  virtual std::string describe(int64_t steps, int64_t rounds, int64_t per_round) const = 0;
  // One round of `count` steps from `first`, `workers` in part order; on success the trained
  // parts are in model_. Returns the round's own metrics (the loop adds timing and evaluation).
  virtual Metrics run_round(Cohort& cohort, const RunContext& ctx, uint32_t round, int64_t first, int64_t count,
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
  Metrics loss_metrics(const RunContext& ctx, uint32_t round, int64_t first, int64_t count, const Message& reply,
                       const std::string& who) const;

  Job job_;
  RoundPlan plan_;
  torch::nn::Sequential model_{nullptr};
  std::vector<NamedTensors> opt_state_;  // per part, between rounds

 private:
  void train(Cohort& cohort, RunContext& ctx);
  std::vector<WorkerInfo> pick(const Cohort& cohort) const;
  uint32_t completed_ = 0;  // rounds recorded
};

}  // namespace fedra
