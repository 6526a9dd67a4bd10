// The check every duration option in seconds shares: finite, positive (or zero where zero means
// none) and at most kMaxSeconds, so that it fits a std::chrono duration in milliseconds (a larger
// one wrapped to a negative timeout) and still means something.
#pragma once

#include <string>

#include "core/kit/error.h"

namespace fedra {

inline constexpr double kMaxSeconds = 1e9;  // 31 years

// `scope.name` in seconds: (0, kMaxSeconds], or [0, kMaxSeconds] with zero_means ("none", "off").
inline void check_seconds(double seconds, const std::string& scope, const char* name, const char* zero_means = nullptr) {
  const bool low_ok = zero_means != nullptr ? seconds >= 0 : seconds > 0;
  FEDRA_REQUIRE(low_ok && seconds <= kMaxSeconds, "{}.{} must be {} seconds up to {:g}{}, got {}", scope, name,
                zero_means != nullptr ? ">= 0" : "> 0", kMaxSeconds,
                zero_means != nullptr ? fmt::format(" (0: {})", zero_means) : std::string(), seconds);
}

}  // namespace fedra
