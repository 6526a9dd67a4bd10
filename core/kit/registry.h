// StrategyRegistry: the strategies a process can run, by name.
//
// An explicit object filled in main() (strategies/builtin.h adds the built-in ones; plugins add
// theirs), never a global that registers itself: what a binary can run is visible in one place.
// Not thread-safe; fill it before use and read it afterwards.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/kit/options.h"
#include "core/kit/strategy.h"

namespace fedra {

struct StrategyInfo {
  std::string name;
  std::string description;  // one line, shown by `fedra strategies`
  std::vector<OptionSpec> options;
  std::function<std::unique_ptr<CoordinatorStrategy>(const Job&)> make_coordinator;
  std::function<std::unique_ptr<WorkerStrategy>(const Job&)> make_worker;
};

// A StrategyInfo from an options struct (core/kit/options.h) and the two halves, built as
// Coordinator(job, options) and Worker(job, options), or Worker(job) for a worker half that
// reads nothing from the options. Both halves parse and validate the same options.
template <class Coordinator, class Worker, class Options>
StrategyInfo make_strategy(std::string name, std::string description) {
  StrategyInfo info;
  info.name = std::move(name);
  info.description = std::move(description);
  info.options = option_specs<Options>();
  info.make_coordinator = [](const Job& job) -> std::unique_ptr<CoordinatorStrategy> {
    return std::make_unique<Coordinator>(job, parse_options<Options>(job.options));
  };
  info.make_worker = [](const Job& job) -> std::unique_ptr<WorkerStrategy> {
    if constexpr (std::is_constructible<Worker, const Job&, const Options&>::value) {
      return std::make_unique<Worker>(job, parse_options<Options>(job.options));
    } else {
      return std::make_unique<Worker>(job);
    }
  };
  return info;
}

// The same from factory functions, for halves defined out of sight in their own files.
template <class Options>
StrategyInfo make_strategy(std::string name, std::string description,
                           std::unique_ptr<CoordinatorStrategy> (*coordinator)(const Job&, const Options&),
                           std::unique_ptr<WorkerStrategy> (*worker)(const Job&, const Options&)) {
  StrategyInfo info;
  info.name = std::move(name);
  info.description = std::move(description);
  info.options = option_specs<Options>();
  info.make_coordinator = [coordinator](const Job& job) { return coordinator(job, parse_options<Options>(job.options)); };
  info.make_worker = [worker](const Job& job) { return worker(job, parse_options<Options>(job.options)); };
  return info;
}

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
