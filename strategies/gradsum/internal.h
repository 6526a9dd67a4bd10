// What gradsum's two halves share: the parameter layout and bucket plan, the test injection,
// and the factories of the halves (coordinator.cc, worker.cc).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <torch/nn/module.h>

#include "core/kit/strategy.h"
#include "core/training/optimizer.h"
#include "strategies/gradsum/gradsum.h"

namespace fedra::gradsum {

struct Injection {
  std::string what = "none";  // none, exit, desync
  int64_t step = -1;
  std::string worker;  // "": the last rank; else the worker of this name
};
Injection parse_injection(const std::string& text);

struct Layout {
  std::vector<std::string> names;
  std::vector<at::Tensor> params;  // the model's parameters, detached (share storage)
  std::vector<std::vector<Piece>> buckets;
  std::vector<std::vector<size_t>> buckets_of;  // per parameter: the buckets holding its pieces

  std::string piece_name(const Piece& p) const;
  at::Tensor slice(const Piece& p) const;
};
Layout layout_of(torch::nn::Module& model, uint64_t bucket_bytes);

// topology=ring: one round of steps run by the replicas among themselves (ring.cc); on success
// `layout`'s parameters, `optimizer` and `buffers` hold the round's end. `session` numbers the
// rings (one per attempt), the same on every member.
struct RingRound {
  uint32_t round = 0;
  int64_t first = 0, count = 0;
};
Metrics run_ring_round(Cohort& cohort, const GradSumOptions& o, const RingRound& rr, Layout& layout,
                       ParamOptimizer& optimizer, NamedTensors& buffers, uint64_t& session);

std::unique_ptr<CoordinatorStrategy> new_coordinator(const Job& job, const GradSumOptions& options);
std::unique_ptr<WorkerStrategy> new_worker(const Job& job, const GradSumOptions& options);

}  // namespace fedra::gradsum
