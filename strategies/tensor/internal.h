// What tensor's two halves share, and the factories of the halves (coordinator.cc, worker.cc).
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/kit/strategy.h"
#include "strategies/tensor/tensor.h"

namespace fedra::tensor {

// [begin, end) of rank's share of `size` rows split `world` ways, as even as possible.
std::pair<int64_t, int64_t> even_range(int64_t size, int64_t world, int64_t rank);
// The names and shapes of rank's slices (no data: for checking what comes back).
NamedTensors shard_layout(const ShardPlan& plan, int64_t rank);

std::unique_ptr<CoordinatorStrategy> new_coordinator(const Job& job, const TensorOptions& options);
std::unique_ptr<WorkerStrategy> new_worker(const Job& job, const TensorOptions& options);

}  // namespace fedra::tensor
