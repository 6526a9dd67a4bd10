// What the asynchronous strategies' two halves share.
#pragma once

#include <memory>
#include <vector>

#include "core/kit/message.h"
#include "core/kit/strategy.h"

#include "strategies/async/async.h"

namespace fedra::async {

// fedasync's options: AsyncOptions with its mode and defaults (every update applied at once).
struct FedAsyncOptions : AsyncOptions {
  FedAsyncOptions() {
    mode = Mode::kFedAsync;
    buffer_ = 1;
  }
};

// fedasync's step: x <- (1 - a) x + a w over the floating tensors (integer buffers take w's).
NamedTensors mix(const NamedTensors& global, const NamedTensors& w, double a);

// fedbuff's buffer: K deltas, each weighted by its staleness, summed in float64.
class DeltaBuffer {
 public:
  void add(const NamedTensors& global, const NamedTensors& delta, double s);
  int64_t size() const { return count_; }
  // The aggregate x + lr D, D = sum s(tau_i) delta_i / K (integer buffers: the latest value);
  // the buffer is empty afterwards.
  NamedTensors flush(const NamedTensors& global, double lr);

 private:
  NamedTensors sum_;
  int64_t count_ = 0;
};

// The updates between two server updates, for the line: staleness (and its histogram over the
// whole run: bins 0, 1, 2-3, 4-7, ..., 64+), loss, the slowest training.
class Window {
 public:
  void add(int64_t tau, double loss, double train_s);
  // Adds train_loss, staleness_mean, staleness_max, staleness_hist and updates_in_step to `line`.
  void report(Metrics& line);
  double take_train_s();
  const std::vector<double>& histogram() const { return hist_; }
  void set_histogram(std::vector<double> h) { hist_ = std::move(h); }

 private:
  std::vector<double> staleness_;
  double loss_ = 0, train_s_ = 0;
  std::vector<double> hist_ = std::vector<double>(8, 0.0);
};

std::unique_ptr<CoordinatorStrategy> make_coordinator(const Job& job, const AsyncOptions& options);
std::unique_ptr<WorkerStrategy> make_worker(const Job& job, const AsyncOptions& options);

}  // namespace fedra::async
