#include "core/kit/option_groups.h"

#include <algorithm>

namespace fedra {

// The optimiser's own words since Fedra's first release, which scripts may match.
std::string fedra_enum_refusal(OptimizerKind, const std::string&, std::string_view, const std::string& value,
                               const std::vector<std::string>& choices) {
  return fmt::format("unknown optimizer '{}'; use {}", value, join_choices(choices));
}

void OptimizerOptions::validate(const std::string& scope) const {
  FEDRA_REQUIRE(lr_ > 0, "{}.lr must be > 0, got {}", scope, lr_);
  FEDRA_REQUIRE(momentum_ >= 0 && momentum_ < 1, "{}.momentum must be in [0, 1), got {}", scope, momentum_);
  FEDRA_REQUIRE(weight_decay_ >= 0, "{}.weight_decay must be >= 0, got {}", scope, weight_decay_);
}

void LocalTrainingOptions::validate(const std::string& scope) const {
  FEDRA_REQUIRE(local_epochs_ >= 0 && local_steps_ >= 0, "{} local_epochs and local_steps must be >= 0", scope);
  FEDRA_REQUIRE(batch_size_ >= 1, "{}.batch_size must be >= 1, got {}", scope, batch_size_);
  FEDRA_REQUIRE(proximal_mu_ >= 0, "{}.proximal_mu must be >= 0, got {}", scope, proximal_mu_);
}

int64_t LocalTrainingOptions::planned_steps(int64_t n) const {
  const int64_t per_epoch = (std::max<int64_t>(n, 1) + batch_size_ - 1) / batch_size_;
  if (local_epochs_ == 0) return local_steps_;
  const int64_t steps = local_epochs_ * per_epoch;
  return local_steps_ > 0 ? std::min(steps, local_steps_) : steps;
}

void ScheduleOptions::validate(const std::string& scope) const {
  FEDRA_REQUIRE(steps_ >= 0, "{}.steps must be >= 0, got {}", scope, steps_);
  FEDRA_REQUIRE(steps_ > 0 || epochs_ >= 1, "{} needs steps > 0 or epochs >= 1", scope);
  FEDRA_REQUIRE(steps_per_round_ >= 0, "{}.steps_per_round must be >= 0 (0: one round per epoch), got {}", scope,
                steps_per_round_);
  FEDRA_REQUIRE(batch_size_ >= 1, "{}.batch_size must be >= 1, got {}", scope, batch_size_);
  check_seconds(step_timeout_, scope, "step_timeout");
}

void EvalOptions::validate(const std::string& scope) const {
  FEDRA_REQUIRE(eval_every_ >= 0, "{}.eval_every must be >= 0, got {}", scope, eval_every_);
}

void FailureOptions::validate(const std::string& scope) const {
  FEDRA_REQUIRE(min_workers_ >= 1, "{}.min_workers must be >= 1, got {}", scope, min_workers_);
}

}  // namespace fedra
