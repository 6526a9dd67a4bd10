// The asynchronous strategies' options and registrations.
#include "strategies/async/async.h"

#include <cmath>

#include "strategies/async/internal.h"

namespace fedra::async {

void AsyncOptions::validate() const {
  const char* scope = mode == Mode::kFedAsync ? "fedasync" : "fedbuff";
  FEDRA_REQUIRE(updates_ >= 1, "{}.updates must be >= 1, got {}", scope, updates_);
  FEDRA_REQUIRE(concurrency_ >= 0, "{}.concurrency must be >= 0 (0 = every client), got {}", scope, concurrency_);
  FEDRA_REQUIRE(buffer_ >= 1, "{}.buffer must be >= 1, got {}", scope, buffer_);
  FEDRA_REQUIRE(mode == Mode::kFedBuff || buffer_ == 1,
                "fedasync applies every update as it comes (buffer 1); for buffered updates use fedbuff");
  FEDRA_REQUIRE(mixing_ > 0 && mixing_ <= 1, "{}.mixing must be in (0, 1], got {}", scope, mixing_);
  FEDRA_REQUIRE(staleness_a_ >= 0 && staleness_b_ >= 0, "{}.staleness_a and staleness_b must be >= 0", scope);
  FEDRA_REQUIRE(max_staleness_ >= 0, "{}.max_staleness must be >= 0 (0 = take all), got {}", scope, max_staleness_);
  FEDRA_REQUIRE(local_epochs_ >= 1 || local_steps_ >= 1, "{}: local_epochs or local_steps must be >= 1",
                scope);
  check_seconds(update_timeout_, scope, "update_timeout");
  FEDRA_REQUIRE(mode == Mode::kFedBuff || server_.server_opt() == ServerOpt::kNone,
                "fedasync mixes each update in (mixing); a server optimiser needs fedbuff");
}

double AsyncOptions::staleness_weight(int64_t tau) const {
  const auto t = static_cast<double>(std::max<int64_t>(tau, 0));
  switch (staleness_) {
    case Staleness::kConstant: return 1.0;
    case Staleness::kPolynomial: return std::pow(t + 1.0, -staleness_a_);
    case Staleness::kHinge: return t <= staleness_b_ ? 1.0 : 1.0 / (staleness_a_ * (t - staleness_b_) + 1.0);
  }
  return 1.0;
}

namespace {

std::unique_ptr<CoordinatorStrategy> coordinator(const Job& job, const AsyncOptions& o) {
  return make_coordinator(job, o);
}
std::unique_ptr<WorkerStrategy> worker(const Job& job, const AsyncOptions& o) { return make_worker(job, o); }
std::unique_ptr<CoordinatorStrategy> fedasync_coordinator(const Job& job, const FedAsyncOptions& o) {
  return make_coordinator(job, o);
}
std::unique_ptr<WorkerStrategy> fedasync_worker(const Job& job, const FedAsyncOptions& o) {
  return make_worker(job, o);
}

}  // namespace

StrategyInfo fedasync_strategy() {
  return make_strategy<FedAsyncOptions>(
      "fedasync", "Asynchronous FL (Xie et al. 2019): each update mixed in as it arrives, weighted by its staleness",
      &fedasync_coordinator, &fedasync_worker);
}

StrategyInfo fedbuff_strategy() {
  return make_strategy<AsyncOptions>(
      "fedbuff", "Buffered asynchronous FL (Nguyen et al. 2022): K staleness-weighted deltas, then a server step",
      &coordinator, &worker);
}

}  // namespace fedra::async
