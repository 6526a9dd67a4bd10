#include "core/kit/registry.h"

#include <algorithm>

namespace fedra {

void StrategyRegistry::add(StrategyInfo info) {
  FEDRA_REQUIRE(!info.name.empty(), "a strategy needs a name");
  FEDRA_REQUIRE(!contains(info.name), "two strategies are registered as '{}'", info.name);
  FEDRA_REQUIRE(info.make_coordinator && info.make_worker,
                "strategy '{}' must provide both a coordinator and a worker half", info.name);
  for (size_t i = 0; i < info.options.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      FEDRA_REQUIRE(info.options[i].name != info.options[j].name,
                    "strategy '{}' declares the option '{}' twice (an options struct extending another "
                    "must not reuse one of its names)", info.name, info.options[i].name);
    }
  }
  strategies_.push_back(std::move(info));
}

bool StrategyRegistry::contains(const std::string& name) const {
  return std::any_of(strategies_.begin(), strategies_.end(),
                     [&](const StrategyInfo& s) { return s.name == name; });
}

const StrategyInfo& StrategyRegistry::get(const std::string& name) const {
  for (const auto& s : strategies_) {
    if (s.name == name) return s;
  }
  std::vector<std::string> names;
  for (const auto& s : strategies_) names.push_back(s.name);
  FEDRA_FAIL("unknown strategy '{}'; available: {} (see `fedra strategies`)", name,
             fmt::join(names, ", "));
}

OptionMap StrategyRegistry::resolve_options(const std::string& strategy,
                                            const OptionMap& given) const {
  const StrategyInfo& info = get(strategy);
  std::vector<std::string> known;
  OptionMap resolved(strategy);
  for (const auto& spec : info.options) {
    known.push_back(spec.name);
    resolved.set(spec.name, spec.default_value);
  }
  given.require_known(known);
  for (const auto& [k, v] : given.values()) resolved.set(k, v);
  return resolved;
}

}  // namespace fedra
