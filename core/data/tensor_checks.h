// Checks on received tensors that must be cheap enough to run on every update.
#pragma once

#include <ATen/core/Tensor.h>

#include "core/kit/message.h"

namespace fedra {

// True if no element is NaN or infinite. One pass over the bytes (exponent bit test, vectorised
// and split over LibTorch's intra-op threads), no temporaries; integer tensors are always finite.
bool all_finite(const at::Tensor& t);

// Throws Error naming the first tensor whose name, dtype or shape differs from `reference`.
void check_layout(const NamedTensors& reference, const NamedTensors& got);
// Throws Error naming the first floating tensor holding NaN or Inf.
void check_finite(const NamedTensors& got);

// A 64-bit hash of the tensors' bytes, in order (contiguous CPU tensors): equal bits give equal
// checksums, so replicas that must be identical can compare one number (gradsum's sync check).
uint64_t checksum(const std::vector<at::Tensor>& tensors);

}  // namespace fedra
