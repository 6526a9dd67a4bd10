// Gradient-summing replicas: synchronous data parallelism through the coordinator.
//
// Every worker holds a full replica of the model and its private data. Each step, every worker
// computes the gradient of one local mini-batch and sends it; the coordinator sums the
// gradients (or averages them: reduce=mean) and sends back what keeps the replicas identical:
//   sync=params    the coordinator steps its optimiser and sends the new parameters
//   sync=gradient  it sends the reduced gradient; every replica (and the coordinator's copy)
//                  steps an identical optimiser, whose state travels with each round's start
// Either way the coordinator holds the authoritative model, evaluates it and writes model.bin.
//
// Streaming. Parameters are grouped into buckets (bucket_kb, filled from the last layer back,
// the order backward produces gradients). A worker sends each bucket from an autograd hook as
// soon as its gradients exist (overlap=true), while backward goes on with the layers below.
// The coordinator folds each bucket into the sum as it arrives, and the moment every worker's
// copy of a bucket is in, reduces, steps (sync=params) and sends it back, while other buckets
// are still on the wire. Nothing waits for a whole model's worth of bytes.
//
// Rounds. A round is one exchange (Cohort::exchange) of steps_per_round steps: it starts with a
// "gradsum.run" request carrying the current parameters (and optimiser state for
// sync=gradient), then per step "gradsum.grad" parts go up and "gradsum.update" parts come
// down, and the worker ends the round with "gradsum.done". Between rounds the coordinator
// evaluates, records a metrics line and lets new workers join.
//
// Sync check. Every check_every steps each replica sends a checksum of its parameters
// ("gradsum.check"); a replica whose bits differ from the coordinator's fails with an error
// naming the step and both checksums.
//
// Failures. A worker that disconnects, errs or misses step_timeout mid-step fails the step:
// with on_failure=fail the run stops with the reason; with on_failure=continue the step is
// completed with the gradients that arrived (reduce=mean divides by the contributors of each
// bucket) and the round goes on with the others, as long as min_workers remain.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "core/options.h"
#include "core/registry.h"

namespace fedra::gradsum {

inline constexpr const char* kRun = "gradsum.run";
inline constexpr const char* kGrad = "gradsum.grad";
inline constexpr const char* kUpdate = "gradsum.update";
inline constexpr const char* kCheck = "gradsum.check";
inline constexpr const char* kDone = "gradsum.done";

struct GradSumOptions {
  FEDRA_ARG(int64_t, steps) = 0;
  FEDRA_ARG(int64_t, epochs) = 1;
  FEDRA_ARG(int64_t, steps_per_round) = 100;
  FEDRA_ARG(int64_t, batch_size) = 32;
  FEDRA_ARG(double, lr) = 0.05;
  FEDRA_ARG(std::string, optimizer) = "sgd";
  FEDRA_ARG(double, momentum) = 0.0;
  FEDRA_ARG(double, weight_decay) = 0.0;
  FEDRA_ARG(std::string, reduce) = "sum";
  FEDRA_ARG(std::string, sync) = "params";
  FEDRA_ARG(int64_t, bucket_kb) = 1024;
  FEDRA_ARG(bool, overlap) = true;
  FEDRA_ARG(std::string, batches) = "shuffle";
  FEDRA_ARG(int64_t, check_every) = 100;
  FEDRA_ARG(std::string, on_failure) = "fail";
  FEDRA_ARG(int64_t, min_workers) = 1;
  FEDRA_ARG(double, step_timeout) = 60;
  FEDRA_ARG(int64_t, eval_every) = 1;
  FEDRA_ARG(std::string, init) = "seed";
  FEDRA_ARG(int64_t, init_skip) = 0;
  FEDRA_ARG(std::string, inject) = "none";
  FEDRA_ARG(bool, exchange_only) = false;

  template <class F>
  void visit(F&& f) {
    f("steps", steps_, "optimiser steps to run; 0 = use epochs");
    f("epochs", epochs_, "passes over the largest worker's data (when steps is 0)");
    f("steps_per_round", steps_per_round_,
      "steps per round: one metrics line, evaluation and chance for workers to join per round; "
      "0 = one round per epoch");
    f("batch_size", batch_size_, "mini-batch size per worker per step");
    f("lr", lr_, "learning rate");
    f("optimizer", optimizer_, "sgd (with momentum) or adam");
    f("momentum", momentum_, "SGD momentum");
    f("weight_decay", weight_decay_, "L2 weight decay");
    f("reduce", reduce_, "sum (the notebook) or mean of the workers' gradients");
    f("sync", sync_,
      "what the coordinator sends back: params (it steps the optimiser) or gradient (every "
      "replica steps its own identical optimiser)");
    f("bucket_kb", bucket_kb_, "gradient bucket size in KiB: the unit that streams and is summed");
    f("overlap", overlap_, "send each bucket from the backward pass as soon as it is ready");
    f("batches", batches_,
      "shuffle (seeded per worker and epoch), sequential, or notebook (the seed notebook's "
      "slicing: worker r takes rows [(i+r)B mod n, (i+r+1)B mod n) at step i, empty when it wraps)");
    f("check_every", check_every_, "replicas send a parameter checksum every N steps; 0 = never");
    f("on_failure", on_failure_, "fail (stop the run) or continue (go on without the worker)");
    f("min_workers", min_workers_, "least workers a round needs (and, with continue, keeps)");
    f("step_timeout", step_timeout_, "seconds a step may wait for a worker before failing it");
    f("eval_every", eval_every_, "evaluate on the coordinator's test set every N rounds; 0 = never");
    f("init", init_,
      "model initialisation: seed (from --seed) or after-data (torch's generator continues "
      "after the synthetic dataset's draws, as in the notebook)");
    f("init_skip", init_skip_, "with after-data: build and discard this many models first");
    f("inject", inject_,
      "fault injection for tests: none, exit:STEP (the last worker dies mid-step) or "
      "desync:STEP (the last worker perturbs its weights)");
    f("exchange_only", exchange_only_,
      "benchmark the exchange alone: workers skip forward and backward and send a constant "
      "gradient; everything else (buckets, sum, optimiser, updates, checks) runs as usual");
  }
  void validate() const;
};

StrategyInfo gradsum_strategy();

// A slice of one parameter, flattened: elements [offset, offset + count) of parameter `param`.
// On the wire it is a 1-D tensor named "NAME@OFFSET".
struct Piece {
  size_t param = 0;
  int64_t offset = 0;
  int64_t count = 0;
  bool operator==(const Piece& o) const {
    return param == o.param && offset == o.offset && count == o.count;
  }
  friend std::ostream& operator<<(std::ostream& os, const Piece& p) {
    return os << "{param " << p.param << ", offset " << p.offset << ", count " << p.count << "}";
  }
};

// The buckets: parameters taken from the last back (the order backward produces gradients),
// each cut into pieces of at most `bucket_bytes` (a multiple of 64 bytes), the pieces packed in
// order into buckets closed once they hold at least `bucket_bytes`. A large layer thus streams
// as several buckets, so summing one overlaps the transfer of the next. Both halves compute the
// same plan from the same model and option.
std::vector<std::vector<Piece>> plan_buckets(const std::vector<at::Tensor>& params,
                                             uint64_t bucket_bytes);

}  // namespace fedra::gradsum
