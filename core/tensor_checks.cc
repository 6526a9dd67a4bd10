#include "core/tensor_checks.h"

#include <atomic>

#include <ATen/Parallel.h>

namespace fedra {

namespace {

// A float is NaN or infinite exactly when all its exponent bits are set.
template <class Bits>
bool exponents_finite(const at::Tensor& t, Bits exponent_mask) {
  const at::Tensor c = t.contiguous();
  const auto* p = static_cast<const Bits*>(c.data_ptr());
  const int64_t n = c.numel() * (c.is_complex() ? 2 : 1);
  std::atomic<bool> finite{true};
  at::parallel_for(0, n, int64_t{1} << 20, [&](int64_t begin, int64_t end) {
    // An OR of comparisons vectorises (1.4 ms for 40 MB here, faster than memcpy); a running
    // max of the exponents did not (5 ms).
    Bits bad = 0;
    for (int64_t i = begin; i < end; ++i) bad |= static_cast<Bits>((p[i] & exponent_mask) == exponent_mask);
    if (bad != 0) finite.store(false, std::memory_order_relaxed);
  });
  return finite.load();
}

}  // namespace

bool all_finite(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat:
    case at::kComplexFloat:
      return exponents_finite<uint32_t>(t, 0x7f800000u);
    case at::kDouble:
    case at::kComplexDouble:
      return exponents_finite<uint64_t>(t, 0x7ff0000000000000ull);
    case at::kHalf:
      return exponents_finite<uint16_t>(t, uint16_t{0x7c00});
    case at::kBFloat16:
      return exponents_finite<uint16_t>(t, uint16_t{0x7f80});
    default:
      return true;
  }
}

void check_layout(const NamedTensors& reference, const NamedTensors& got) {
  FEDRA_REQUIRE(got.size() == reference.size(), "update has {} tensors, the model has {}",
                got.size(), reference.size());
  for (size_t i = 0; i < got.size(); ++i) {
    const auto& [rname, r] = reference[i];
    const auto& [gname, g] = got[i];
    FEDRA_REQUIRE(gname == rname, "update tensor #{} is '{}', the model's is '{}'", i, gname, rname);
    FEDRA_REQUIRE(g.sizes() == r.sizes() && g.scalar_type() == r.scalar_type(),
                  "update tensor '{}' is {}, the model's is {}", gname, describe_tensor(g),
                  describe_tensor(r));
  }
}

void check_finite(const NamedTensors& got) {
  for (const auto& [name, t] : got) {
    FEDRA_REQUIRE(all_finite(t), "update tensor '{}' holds NaN or infinite values", name);
  }
}

}  // namespace fedra
