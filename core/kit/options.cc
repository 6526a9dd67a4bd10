#include "core/kit/options.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <limits>

namespace fedra {

namespace {

const std::string* find(const std::map<std::string, std::string>& values, std::string_view name) {
  auto it = values.find(std::string(name));
  return it == values.end() ? nullptr : &it->second;
}

std::string trim(std::string_view s) {
  const auto b = s.find_first_not_of(" \t");
  if (b == std::string_view::npos) return {};
  const auto e = s.find_last_not_of(" \t");
  return std::string(s.substr(b, e - b + 1));
}

}  // namespace

std::string OptionMap::get_string(std::string_view name, const std::string& fallback) const {
  const std::string* v = find(values_, name);
  return v ? *v : fallback;
}

int64_t OptionMap::get_int(std::string_view name, int64_t fallback) const {
  const std::string* v = find(values_, name);
  if (!v) return fallback;
  errno = 0;
  char* end = nullptr;
  const long long parsed = std::strtoll(v->c_str(), &end, 10);
  FEDRA_REQUIRE(!v->empty() && end == v->c_str() + v->size() && errno == 0,
                "option {}.{}: '{}' is not an integer", scope_, name, *v);
  return parsed;
}

double OptionMap::get_double(std::string_view name, double fallback) const {
  const std::string* v = find(values_, name);
  if (!v) return fallback;
  errno = 0;
  char* end = nullptr;
  const double parsed = std::strtod(v->c_str(), &end);
  FEDRA_REQUIRE(!v->empty() && end == v->c_str() + v->size() && errno == 0 && std::isfinite(parsed),
                "option {}.{}: '{}' is not a finite number", scope_, name, *v);
  // Options become float32 tensor scalars (a learning rate, a clip norm): a larger magnitude would
  // fail on a worker mid-job ("cannot be converted to type float without overflow").
  FEDRA_REQUIRE(std::fabs(parsed) <= static_cast<double>(std::numeric_limits<float>::max()),
                "option {}.{}: '{}' is beyond float32's range (magnitude at most 3.4e38)", scope_, name, *v);
  return parsed;
}

bool OptionMap::get_bool(std::string_view name, bool fallback) const {
  const std::string* v = find(values_, name);
  if (!v) return fallback;
  if (*v == "1" || *v == "true" || *v == "yes" || *v == "on") return true;
  if (*v == "0" || *v == "false" || *v == "no" || *v == "off") return false;
  FEDRA_FAIL("option {}.{}: '{}' is not a boolean (true/false)", scope_, name, *v);
}

void OptionMap::require_known(const std::vector<std::string>& known) const {
  for (const auto& [k, v] : values_) {
    if (std::find(known.begin(), known.end(), k) == known.end()) {
      FEDRA_FAIL("unknown option '{}' for {}; known options: {}", k, scope_,
                 known.empty() ? std::string("(none)") : fmt::format("{}", fmt::join(known, ", ")));
    }
  }
}

Spec parse_spec(std::string_view text, std::string_view what) {
  Spec spec;
  const std::string t = trim(text);
  FEDRA_REQUIRE(!t.empty(), "empty {} spec", what);
  const auto colon = t.find(':');
  spec.name = trim(std::string_view(t).substr(0, colon));
  spec.args = OptionMap(fmt::format("{} '{}'", what, spec.name));
  if (colon == std::string::npos) return spec;
  std::string_view rest = std::string_view(t).substr(colon + 1);
  while (!rest.empty()) {
    const auto comma = rest.find(',');
    const std::string item = trim(rest.substr(0, comma));
    rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
    if (item.empty()) continue;
    const auto eq = item.find('=');
    FEDRA_REQUIRE(eq != std::string::npos && eq > 0,
                  "{} spec '{}': '{}' is not key=value (e.g. {}:key=value,key2=value2)", what, t,
                  item, spec.name);
    spec.args.set(trim(std::string_view(item).substr(0, eq)),
                  trim(std::string_view(item).substr(eq + 1)));
  }
  return spec;
}

std::string join_choices(const std::vector<std::string>& choices) {
  std::string out;
  for (size_t i = 0; i < choices.size(); ++i) {
    if (i > 0) out += i + 1 == choices.size() ? " or " : ", ";
    out += choices[i];
  }
  return out;
}

std::string format_option_value(int64_t v) { return std::to_string(v); }
std::string format_option_value(bool v) { return v ? "true" : "false"; }
std::string format_option_value(double v) { return fmt::format("{}", v); }

void check_seconds(double seconds, const std::string& scope, const char* name, const char* zero_means) {
  const bool low_ok = zero_means != nullptr ? seconds >= 0 : seconds > 0;
  FEDRA_REQUIRE(low_ok && seconds <= kMaxSeconds, "{}.{} must be {} seconds up to {:g}{}, got {}", scope, name,
                zero_means != nullptr ? ">= 0" : "> 0", kMaxSeconds,
                zero_means != nullptr ? fmt::format(" (0: {})", zero_means) : std::string(), seconds);
}

}  // namespace fedra
