// The coordinator half shared by the model-parallel strategies (tensor, pipeline): a fixed set
// of N workers, each holding a part of one model, trained in rounds of steps. Per round, one
// exchange: each worker gets its part (and its optimiser state) in a run request, the parts talk
// while the round runs, and each returns its trained part in its final reply. Between rounds the
// coordinator holds the whole model: it evaluates it, records the metrics line and, at the end,
// writes model.bin. A worker lost mid-round fails the round (no other worker holds its part);
// model.bin then holds the model of the last recorded round.
//
// How the parts talk: through the coordinator (star), or over direct links (core/net/peer.h), a ring
// for tensor's collectives or a chain for pipeline's stages. With direct links the run request
// also carries the members' peer addresses and a session; the parts send the coordinator only a
// heartbeat ("STRATEGY.progress") at most once a second, and a part that fails closes its links so
// its neighbours fail within milliseconds. The round's error then lists every part's failure,
// the cause first (a worker that is gone, then one that refused what it was sent, then those
// whose links broke).
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <torch/nn/modules/container/sequential.h>

#include "core/data/batching.h"
#include "core/kit/option_groups.h"
#include "core/kit/strategy.h"
#include "core/loops/cohort.h"
#include "core/loops/stepped_strategy.h"
#include "core/model/model.h"
#include "core/model/script_model.h"
#include "core/net/peer.h"
#include "core/training/optimizer.h"
#include "strategies/run_message.h"

namespace fedra {

struct RoundPlan {
  RoundPlan(std::string strategy_, std::string part_, size_t parts_, ScheduleOptions schedule_, InitOptions init_)
      : strategy(std::move(strategy_)), part(std::move(part_)), parts(parts_), schedule(std::move(schedule_)),
        init(std::move(init_)) {}
  std::string strategy;     // for messages: "tensor round 3 failed: ..."
  std::string part;         // what a worker holds, for messages: "rank", "stage"
  size_t parts = 1;         // workers taking part
  ScheduleOptions schedule;
  InitOptions init;         // how the whole model is drawn before it is cut into parts
  // A TorchScript model is taken as its top-level children run in order (script_chain), which
  // the strategy cuts like a spec's layers; false: the strategy refuses TorchScript models.
  bool script_children = false;
  // Direct links between the parts: true, false, or unset for auto (when can_link()); `links`
  // names them in messages and metrics ("ring", "chain": the worker half makes them).
  std::optional<bool> direct;
  std::string links = "ring";
};

class ModelParallelCoordinator : public SteppedStrategy {
 protected:
  ModelParallelCoordinator(Job job, RoundPlan plan, EvalOptions eval);

  // One round of `steps`, `workers` in part order; on success the trained parts are in model_.
  // Returns the round's own metrics (the loop adds timing and evaluation).
  virtual Metrics run_parts(Cohort& cohort, const RunContext& ctx, const RoundSteps& steps,
                            const std::vector<WorkerInfo>& workers) = 0;

  // Whether this round's parts link directly (plan_.direct, or auto: can_link(workers)); when
  // asked for, exchange() refuses a worker without a peer port.
  bool direct(const std::vector<WorkerInfo>& workers) const;
  // Runs one exchange with `workers` (part i = workers[i]): on_part(i, worker, message) sees every
  // partial message; the final replies, which must be of kind `done_kind`, come back in part
  // order. With `direct`, the run requests get the members' peer addresses and a new session, and
  // the only partial messages allowed are heartbeats. A failure throws, naming the worker and its
  // part (star: the first, the others cancelled; direct: every part's, the cause first).
  using PartHandler = std::function<void(size_t part, const WorkerInfo& worker, Message&& message)>;
  std::vector<Message> exchange(Cohort& cohort, uint32_t round, const std::vector<WorkerInfo>& workers,
                                std::vector<Instruction> instructions, const char* done_kind, const PartHandler& on_part,
                                const std::string& why_fatal, bool direct);
  // Adds "topology" and, with direct links, "peer_bytes" (bytes the parts sent each other).
  void add_link_metrics(Metrics& line, const std::vector<Message>& done, bool direct) const;
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
  uint64_t session_ = first_peer_session();  // the newest set of direct links asked for
  // The first `parts` workers by name.
  std::vector<WorkerInfo> pick(const Cohort& cohort) const;
};

// The worker half they share: a run request brings this worker's part and its optimiser state;
// the worker trains it for the round's steps, talking to the other parts through its link or its
// direct links, and returns it in its final reply.
class ModelParallelWorker : public WorkerStrategy {
 public:
  // run_part() with the direct links' upkeep: their byte counts go into the reply; a failure
  // closes them at once, so the neighbours fail now instead of at their timeout.
  Message handle(const Message& request, WorkerContext& ctx, WorkerLink& link) final;

 protected:
  // `closed`: direct links form a ring (tensor), else a chain (pipeline). `strategy` names the
  // heartbeat, "STRATEGY.progress".
  ModelParallelWorker(const Job& job, ScheduleOptions schedule, OptimizerOptions optim, const std::string& strategy,
                      bool closed);

  virtual Message run_part(const Message& request, WorkerContext& ctx, WorkerLink& link) = 0;

  // Decodes the run request of `run_kind` and readies the run: the link, the step timeout,
  // timers, and the direct links when the request lists peers.
  RunIns begin(const Message& request, WorkerContext& ctx, WorkerLink& link, const std::string& run_kind);

  // Direct links (valid during run_part when the request listed peers).
  bool linked() const { return ring_ != nullptr; }
  size_t peer_waiting() const { return peer_inbox_.size(); }  // messages from neighbours not yet taken
  const PeerRing& peers() const { return *ring_; }
  // Sends to the next / previous part; the tensors must not change until the round ends.
  void send_next(Message m);
  void send_prev(Message m);
  // The first message from a neighbour that `wanted` accepts; others wait, after `keep` has checked
  // them (it throws to refuse one). Blocks up to the step timeout; time blocked goes to wait_s_.
  Message await_peer(const std::function<bool(const Message&)>& wanted,
                     const std::function<void(const Message&)>& keep, const std::string& what);
  // With direct links: a heartbeat to the coordinator if none went for a second.
  void heartbeat(int64_t step);
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
  std::string name_;            // this worker's
  WorkerLink* link_ = nullptr;  // the link of the request being handled
  std::optional<BatchOrder> batches_;
  std::vector<std::string> names_;
  std::vector<at::Tensor> params_;
  std::optional<ParamOptimizer> optimizer_;
  std::chrono::milliseconds timeout_{60000};
  double compute_s_ = 0, wait_s_ = 0;

 private:
  void send_peer(bool next, Message m);

  ScheduleOptions schedule_;
  OptimizerOptions optim_;
  Heartbeat beat_;
  bool closed_;
  std::unique_ptr<PeerRing> ring_;
  std::deque<Message> peer_inbox_;  // from the neighbours, not yet taken
  size_t writes_pending_ = 0;
};

}  // namespace fedra
