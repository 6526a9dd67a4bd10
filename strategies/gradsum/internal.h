// What gradsum's two halves share: the parameter layout and bucket plan, the test injection,
// and the factories of the halves (coordinator.cc, worker.cc).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <torch/nn/module.h>

#include "core/strategy.h"
#include "strategies/gradsum/gradsum.h"

namespace fedra::gradsum {

struct Injection {
  std::string what = "none";  // none, exit, desync
  int64_t step = -1;
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

std::unique_ptr<CoordinatorStrategy> new_coordinator(const Job& job, const GradSumOptions& options);
std::unique_ptr<WorkerStrategy> new_worker(const Job& job, const GradSumOptions& options);

}  // namespace fedra::gradsum
