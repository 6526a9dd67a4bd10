#include "core/data/tensor_checks.h"

#include <cstring>

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

uint64_t checksum(const std::vector<at::Tensor>& tensors) {
  // Four independent multiply-xor lanes over 64-bit words (so the loop is not one long
  // dependency chain), folded at the end; the tail bytes go in one by one.
  uint64_t lane[4] = {0x9E3779B97F4A7C15ULL, 0xC2B2AE3D27D4EB4FULL, 0x165667B19E3779F9ULL,
                      0x27D4EB2F165667C5ULL};
  constexpr uint64_t kMul = 0xFF51AFD7ED558CCDULL;
  for (const at::Tensor& t : tensors) {
    FEDRA_REQUIRE(t.device().is_cpu() && t.is_contiguous(), "checksum needs contiguous CPU tensors");
    const auto* bytes = static_cast<const unsigned char*>(t.data_ptr());
    const size_t n = t.numel() * t.element_size();
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
      for (int k = 0; k < 4; ++k) {
        uint64_t w;
        std::memcpy(&w, bytes + i + 8 * k, 8);
        lane[k] = (lane[k] ^ w) * kMul;
      }
    }
    for (; i < n; ++i) lane[0] = (lane[0] ^ bytes[i]) * kMul;
    lane[1] ^= n;  // tensor boundaries count
  }
  uint64_t h = lane[0];
  for (int k = 1; k < 4; ++k) h = (h ^ (lane[k] + (h << 6) + (h >> 2))) * kMul;
  return h ^ (h >> 33);
}

}  // namespace fedra
