// Gradient-summing replicas: synchronous data parallelism through the coordinator.
//
// Every worker holds a full replica of the model and its private data. Each step, every worker
// computes the gradient of one local mini-batch and sends it; the coordinator sums the
// gradients (or averages them: reduce=mean) and sends back what keeps the replicas identical:
//   sync=params    the coordinator steps its optimiser and sends the new parameters
//   sync=gradient  it sends the reduced gradient; every replica (and the coordinator's copy)
//                  steps an identical optimiser, whose state travels with each round's start
// Either way the coordinator holds the authoritative model, evaluates it and writes model.bin.
// Buffers (batch norm's running statistics) are not gradients: each replica updates its own
// within a round, returns them in gradsum.done, and the coordinator's model (and every replica
// at the next round's start) takes their mean; integer buffers (num_batches_tracked) the first.
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
// Topology. The above is topology=star. With topology=ring the coordinator leaves the data
// path: it sends each replica its rank and the ring's addresses (core/net/peer.h); the replicas
// all-reduce each bucket among themselves (reduce-scatter then all-gather, started from the same
// backward hooks), each steps its own identical optimiser, and rank 0 brings the model and
// optimiser state home in its final reply. The coordinator hears heartbeats and checksums
// (ring.cc). A failed member closes its links, so the ring fails at once; with
// on_failure=continue the ring re-forms without a lost member and the round runs again.
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

#include "core/kit/option_groups.h"
#include "core/kit/registry.h"
#include "core/model/model.h"

namespace fedra::gradsum {

inline constexpr const char* kRun = "gradsum.run";
inline constexpr const char* kGrad = "gradsum.grad";
inline constexpr const char* kUpdate = "gradsum.update";
inline constexpr const char* kCheck = "gradsum.check";
inline constexpr const char* kDone = "gradsum.done";
inline constexpr const char* kProgress = "gradsum.progress";  // ring: a replica's heartbeat

enum class Reduce { kSum, kMean };
FEDRA_ENUM_NAMES(Reduce, {Reduce::kSum, "sum"}, {Reduce::kMean, "mean"})
enum class Sync { kParams, kGradient };
FEDRA_ENUM_NAMES(Sync, {Sync::kParams, "params"}, {Sync::kGradient, "gradient"})

// Fault injection for tests (--gradsum.testing.NAME, listed by --help-testing).
struct GradSumTesting {
  FEDRA_ARG(std::string, inject) = "none";
  template <class F>
  void visit(F&& f) {
    f("inject", inject_,
      "none, exit:STEP (the last worker dies mid-step) or desync:STEP (the last worker perturbs its weights); "
      "exit:STEP@NAME and desync:STEP@NAME pick the worker by name");
  }
  void validate(const std::string& scope) const;
};

struct GradSumOptions : SteppedOptions {
  GradSumOptions() { schedule_.steps_per_round(100); }
  FEDRA_ARG(Reduce, reduce) = Reduce::kSum;
  FEDRA_ARG(Sync, sync) = Sync::kParams;
  FEDRA_ARG(Topology, topology) = Topology::kAuto;
  FEDRA_ARG(int64_t, bucket_kb) = 1024;
  FEDRA_ARG(bool, overlap) = true;
  FEDRA_ARG(int64_t, check_every) = 100;
  FEDRA_ARG(FailureOptions, failure);
  FEDRA_ARG(InitOptions, init);
  FEDRA_ARG(bool, exchange_only) = false;
  FEDRA_ARG(GradSumTesting, testing);

  template <class F>
  void visit(F&& f) {
    SteppedOptions::visit(f);
    f("reduce", reduce_, "sum (the notebook) or mean of the workers' gradients");
    f("sync", sync_,
      "what the coordinator sends back: params (it steps the optimiser) or gradient (every "
      "replica steps its own identical optimiser)");
    f("topology", topology_,
      "star: every gradient goes through the coordinator, which sums it; ring: the workers "
      "all-reduce among themselves over direct links (bucketed ring, overlapped with backward) and "
      "each steps its own identical optimiser, while the coordinator only orchestrates (sync is "
      "then ignored); auto: ring when every worker of the round has a peer port and there are "
      "at least 2, else star");
    f("bucket_kb", bucket_kb_, "gradient bucket size in KiB: the unit that streams and is summed");
    f("overlap", overlap_, "send each bucket from the backward pass as soon as it is ready");
    f("check_every", check_every_, "replicas send a parameter checksum every N steps; 0 = never");
    f.group(failure_);
    f.group(init_);
    f("exchange_only", exchange_only_,
      "benchmarks: workers send a constant gradient without computing; the exchange runs as usual");
    f.testing(testing_);
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
