// What pipeline's two halves share, and the factories of the halves (coordinator.cc, worker.cc).
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/kit/strategy.h"
#include "strategies/pipeline/pipeline.h"

namespace fedra::pipeline {

// A stage's parameters then its buffers (batch norm statistics), as a round hands them out and
// takes them back.
NamedTensors parameters_of(const torch::nn::Sequential& stage);
std::string describe_stages(const std::vector<torch::nn::Sequential>& stages);

std::unique_ptr<CoordinatorStrategy> new_coordinator(const Job& job, const PipelineOptions& options);
std::unique_ptr<WorkerStrategy> new_worker(const Job& job, const PipelineOptions& options);

}  // namespace fedra::pipeline
