// What the asynchronous strategies' two halves share.
#pragma once

#include <memory>

#include "strategies/async/async.h"

namespace fedra::async {

// fedasync's options: AsyncOptions with its mode and defaults (every update applied at once).
struct FedAsyncOptions : AsyncOptions {
  FedAsyncOptions() {
    mode = Mode::kFedAsync;
    buffer_ = 1;
  }
};

std::unique_ptr<CoordinatorStrategy> make_coordinator(const Job& job, const AsyncOptions& options);
std::unique_ptr<WorkerStrategy> make_worker(const Job& job, const AsyncOptions& options);

}  // namespace fedra::async
