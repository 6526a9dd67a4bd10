// StrategyRegistry: the strategies a process can run, by name.
//
// An explicit object filled in main() (strategies/builtin.h adds the built-in ones; plugins add
// theirs), never a global that registers itself: what a binary can run is visible in one place.
// Not thread-safe; fill it before use and read it afterwards.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/options.h"
#include "core/strategy.h"

namespace fedra {

struct StrategyInfo {
  std::string name;
  std::string description;  // one line, shown by `fedra strategies`
  std::vector<OptionSpec> options;
  std::function<std::unique_ptr<CoordinatorStrategy>(const Job&)> make_coordinator;
  std::function<std::unique_ptr<WorkerStrategy>(const Job&)> make_worker;
};

class StrategyRegistry {
 public:
  // Throws if the name is taken or a factory is missing.
  void add(StrategyInfo info);
  // Throws naming the known strategies if `name` is not registered.
  const StrategyInfo& get(const std::string& name) const;
  bool contains(const std::string& name) const;
  const std::vector<StrategyInfo>& list() const { return strategies_; }

  // The job's options with every default filled in; throws on unknown options.
  OptionMap resolve_options(const std::string& strategy, const OptionMap& given) const;

 private:
  std::vector<StrategyInfo> strategies_;
};

}  // namespace fedra
