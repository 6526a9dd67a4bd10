// What psl's two halves share: the text forms of a worker's share and the factories of the
// halves (coordinator.cc, worker.cc).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <torch/nn/module.h>

#include "core/kit/strategy.h"
#include "strategies/psl/psl.h"

namespace fedra::psl {

std::string join_ints(const std::vector<int64_t>& v);
std::vector<int64_t> parse_ints(const std::string& text);
std::string pairs_text(const Share& s);  // "i-j,i-j"
Share parse_share(const std::string& towers, const std::string& pairs);
// The number of classes of a psnet; a clear error for any other model.
int64_t classes_of(torch::nn::Module& model);

std::unique_ptr<CoordinatorStrategy> new_coordinator(const Job& job, const PslOptions& options);
std::unique_ptr<WorkerStrategy> new_worker(const Job& job, const PslOptions& options);

}  // namespace fedra::psl
