// The two halves of a training scheme.
//
// A strategy is one name with two halves that run in different processes and talk only through
// Messages:
//  - CoordinatorStrategy::run(cohort, ctx) drives the whole job on the coordinator's main
//    thread. It reads like the notebook's loops: choose workers, cohort.request_all(...) with a
//    deadline, combine the replies as they arrive, evaluate, ctx.report_round(...). Round-driven
//    schemes derive from RoundStrategy (core/loops/round_strategy.h) and fill in Flower-like hooks.
//  - WorkerStrategy::handle(request, ctx, link) turns one request into one reply on a worker. It owns
//    whatever state the worker keeps between requests (its model, optimiser); the worker's
//    private data is in the context and never leaves the process except as the strategy sends it.
// A strategy never touches a socket. Failures (a worker disconnected, missed its deadline or
// replied with an error) reach the coordinator half as explicit Failure values, never silently
// dropped. Throwing fedra::Error from handle() sends the worker's error to the coordinator.
//
// Both halves are created from the same Job, so options are parsed and validated identically on
// both sides. The StrategyRegistry (core/kit/registry.h) maps names to factories.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "core/kit/message.h"
#include "core/kit/options.h"

namespace fedra {

class Cohort;
struct Dataset;

// What every process of a run agrees on. The coordinator sends it to each worker in the
// handshake's "welcome" message.
struct Job {
  std::string strategy;
  std::string model;    // model spec, e.g. "mlp:784-200-200-10" (core/model/model.h)
  std::string loss = "ce";
  uint64_t seed = 1;
  OptionMap options;    // the strategy's options, defaults resolved
};

// A list (std::vector<double>) is written as a JSON array, e.g. federated evaluation's per-class
// accuracy.
using MetricValue = std::variant<double, int64_t, std::string, std::vector<double>>;
using Metrics = std::vector<std::pair<std::string, MetricValue>>;

struct RunContext {
  Job job;
  std::string dataset;  // the dataset spec of the run (e.g. "synthetic:n=320"), when known
  std::string out_dir;  // where the run's files go (empty: none); e.g. the final model.bin
  const Dataset* test_set = nullptr;  // the coordinator's evaluation data, if any
  int threads = 1;
  // How long a strategy waits for workers to (re)join when too few are connected.
  std::chrono::milliseconds wait_timeout{120000};
  // Records one round: the runtime adds strategy, round, bytes on the wire and elapsed time,
  // appends the line to metrics.jsonl and prints the progress line.
  std::function<void(uint32_t round, uint32_t total_rounds, Metrics)> report_round;
  // True once the user asked the coordinator to stop (SIGINT/SIGTERM).
  std::function<bool()> stop_requested = [] { return false; };
  // Checkpoints (strategies that say resumable()): called after every round; when a checkpoint
  // is due (--checkpoint-every, --checkpoint-seconds, and always after the last round) the
  // runtime calls `state` and writes what it returns atomically under OUT/checkpoint/. Unset when
  // there is no --out.
  std::function<void(uint32_t round, uint32_t total_rounds, const std::function<NamedTensors()>& state)> checkpoint;
  // With --resume: the last checkpointed round (0: a fresh start) and the state saved with it.
  uint32_t resume_round = 0;
  NamedTensors resume_state;
  // Step-driven strategies: how often one round may be rolled back to its start and run again
  // after it failed (a worker lost mid-round), once enough workers are connected again; a worker
  // restarted with the same name thus rejoins the job (--round-retries).
  int round_retries = 0;
};

// The worker's side of an exchange (Cohort::exchange): while handle() runs, a strategy can send
// parts of its answer and receive the coordinator's messages for the same request. Blocking, on
// the worker's thread; no hand-offs.
class WorkerLink {
 public:
  virtual ~WorkerLink() = default;
  // Sends one part of the answer to the request being handled (Envelope.partial); returns once
  // the frame is handed to the kernel, so the caller may then modify the tensors.
  virtual void send(const Message& part) = 0;
  // The coordinator's next message for the request being handled. Throws Error if the
  // coordinator cancels the exchange, moves on to another request, ends the job or goes away,
  // or if `timeout` passes.
  virtual Message receive(std::chrono::milliseconds timeout) = 0;
};

class PeerHub;
class LocalTrainer;

struct WorkerContext {
  Job job;
  std::string name;
  uint64_t worker_id = 0;
  const Dataset* data = nullptr;  // this worker's private training data
  // The part of its data the worker holds out of training for federated evaluation (--holdout);
  // null or empty when it holds none.
  const Dataset* eval_data = nullptr;
  int threads = 1;
  // This worker's peer port, for direct worker-to-worker links (core/net/peer.h): rings, stages that
  // talk to each other. Null where there is none (in-process tests, a TLS worker without a
  // certificate of its own).
  PeerHub* peers = nullptr;
  // Who trains locally: null for Fedra's own loop over `data`; the user's loop otherwise (a Python
  // worker: core/training/local_trainer.h). Strategies call train_on_worker(), which picks.
  LocalTrainer* trainer = nullptr;
};

class CoordinatorStrategy {
 public:
  virtual ~CoordinatorStrategy() = default;
  virtual void run(Cohort& cohort, RunContext& ctx) = 0;
  // True if run() checkpoints through ctx.checkpoint and continues from ctx.resume_round.
  virtual bool resumable() const { return false; }
};

class WorkerStrategy {
 public:
  virtual ~WorkerStrategy() = default;
  // `link` is the exchange of this request (Cohort::exchange); valid only during this call.
  virtual Message handle(const Message& request, WorkerContext& ctx, WorkerLink& link) = 0;
};

}  // namespace fedra
