// Robust aggregation: rules that take a round's updates together, so that a few bad workers
// (faulty or Byzantine) cannot drag the model where they like. Unlike the streaming weighted mean
// (core/federated/aggregation.h, O(model) memory) each must hold every update of the round: O(updates x
// model), which --fedavg.hold_budget_mb bounds.
//
// With n updates w_1..w_n (whole models), per floating-point tensor and elementwise unless said:
//   median        the coordinate-wise median (Yin et al. 2018); for even n the mean of the two
//                 middle values (numpy's convention)
//   trimmed_mean  drop the floor(beta n) smallest and largest values of each coordinate, average
//                 the rest (Yin et al. 2018)
//   krum          the one update whose summed squared distance to its n - f - 2 nearest others is
//                 least (Blanchard et al. 2017); needs n >= 2f + 3
//   multi_krum    the plain mean of the m updates with the least such scores (m = 0: n - f)
// None of them weights by example count. Integer tensors (counters) take the first update's.
// Norm clipping (clip_updates) works on each update before any rule, the mean included: the
// update u = w - global is scaled to norm C when its L2 norm (over all floating tensors) is above C.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/kit/message.h"
#include "core/kit/options.h"

namespace fedra {

enum class Aggregator { kMean, kMedian, kTrimmedMean, kKrum, kMultiKrum };
FEDRA_ENUM_NAMES(Aggregator, {Aggregator::kMean, "mean"}, {Aggregator::kMedian, "median"},
                 {Aggregator::kTrimmedMean, "trimmed_mean"}, {Aggregator::kKrum, "krum"},
                 {Aggregator::kMultiKrum, "multi_krum"})

struct RobustOptions {
  FEDRA_ARG(Aggregator, aggregate) = Aggregator::kMean;
  FEDRA_ARG(double, trim_beta) = 0.1;
  FEDRA_ARG(int64_t, krum_f) = 1;
  FEDRA_ARG(int64_t, krum_m) = 0;
  FEDRA_ARG(double, clip_norm) = 0;
  FEDRA_ARG(double, hold_budget_mb) = 4096;

  template <class F>
  void visit(F&& f) {
    f("aggregate", aggregate_,
      "mean (weighted, streaming, O(model) memory); median, trimmed_mean, krum, multi_krum hold every update of "
      "the round: O(workers x model) memory (docs/strategies.md)");
    f("trim_beta", trim_beta_, "trimmed_mean: fraction of values dropped at each end, [0, 0.5)");
    f("krum_f", krum_f_, "krum, multi_krum: Byzantine workers tolerated (needs workers >= 2f + 3)");
    f("krum_m", krum_m_, "multi_krum: updates averaged; 0 = workers - f");
    f("clip_norm", clip_norm_, "scale each update (w - global) down to this L2 norm; 0 = no clipping");
    f("hold_budget_mb", hold_budget_mb_,
      "the most the held updates may take (MB); a round whose sampled updates would need more is refused "
      "before any worker is asked");
  }
  void validate(const std::string& scope) const;
  bool holds_updates() const { return aggregate_ != Aggregator::kMean; }
};

// The rules above over `updates` (same layout each, at least one); `first` supplies integer tensors.
NamedTensors coordinate_median(const std::vector<NamedTensors>& updates);
NamedTensors trimmed_mean(const std::vector<NamedTensors>& updates, double beta);
// Krum's scores, one per update (less is more central).
std::vector<double> krum_scores(const std::vector<NamedTensors>& updates, int64_t f);
// The indices krum (m = 1) or multi_krum keeps, by score; throws naming n and f when n < 2f + 3.
std::vector<size_t> krum_select(const std::vector<NamedTensors>& updates, int64_t f, int64_t m);
NamedTensors plain_mean(const std::vector<NamedTensors>& updates, const std::vector<size_t>& which);
NamedTensors robust_aggregate(const RobustOptions& o, const std::vector<NamedTensors>& updates);

// The L2 norm of update - global over the floating-point tensors.
double update_norm(const NamedTensors& global, const NamedTensors& update);
// Scales `update`'s difference from `global` to L2 norm `c` if it is larger (floating tensors
// only); returns the norm it had.
double clip_to_norm(const NamedTensors& global, NamedTensors& update, double c);

}  // namespace fedra
