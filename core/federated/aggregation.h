// WeightedAverage: the running weighted mean of model-shaped tensor lists.
//
// The memory of one model (plus its float64 sum), however many updates are added, so a
// coordinator can fold each update in as it arrives and free it. Float32 tensors accumulate in
// float64: each product weight x value is exact in double when the weight is an example count
// (an integer below 2^29), so the float32 average is, in practice, the same whatever order the
// updates arrived in, and two runs of one configuration give the same model. (Exactness of the
// sum itself is not guaranteed; a difference would need a double sum within 2^-29 of a float32
// rounding boundary.) Float64 tensors sum in float64, float16/bfloat16 in float32; integer
// tensors (counters) take the first update's values.
//
// Every update is checked first (layout against the first update, finite values, weight > 0): a
// rejected update leaves the sum as it was. Not thread-safe.
#pragma once

#include <vector>

#include "core/kit/message.h"

namespace fedra {

class WeightedAverage {
 public:
  // `verified`: the caller has already checked the values are finite (one pass less).
  void add(const NamedTensors& tensors, double weight, bool verified = false);
  size_t count() const { return count_; }
  double total_weight() const { return total_; }
  // The average, in each tensor's own dtype; the object is empty afterwards (its sum buffers are
  // kept for the next round).
  NamedTensors take_average();
  // Offers tensors (the previous average) whose memory the next take_average() may write into,
  // sparing a model-sized allocation each round. Kept only if nothing else references them.
  void recycle(NamedTensors tensors);

 private:
  NamedTensors layout_;          // the first update's names, shapes, dtypes (meta tensors)
  std::vector<at::Tensor> sum_;  // accumulators, reused across rounds when the layout matches
  NamedTensors spare_;
  double total_ = 0;
  size_t count_ = 0;
};

}  // namespace fedra
