// Strategies from shared libraries loaded at run time (`--plugin PATH`).
//
// A plugin is a shared library exporting three C symbols, which the FEDRA_PLUGIN macro writes:
//
//   #include "core/kit/plugin.h"
//   void add_my_strategies(fedra::StrategyRegistry& registry) { registry.add(my_strategy()); }
//   FEDRA_PLUGIN(add_my_strategies)
//
//   fedra_plugin_abi()       the plugin ABI it was built against (FEDRA_PLUGIN_ABI)
//   fedra_plugin_version()   the Fedra version it was built against
//   fedra_plugin_register()  adds its strategies to the registry it is given
//
// The ABI number changes whenever the types a plugin sees (StrategyInfo, Message, Cohort, the
// strategy interfaces, options) change layout or meaning; a plugin built against another ABI is
// refused with a message naming both versions. Plugins link the same shared Fedra libraries as
// the host, so there is one copy of every type and registry.
#pragma once

#include <string>
#include <vector>

#include "core/kit/registry.h"

// FEDRA_PLUGIN_ABI comes from the build (the top CMakeLists.txt, the one place it is written) as a
// compile definition of fedra::core, in this tree and in an installed SDK alike.
#ifndef FEDRA_PLUGIN_ABI
#error "FEDRA_PLUGIN_ABI is not defined: link the target against fedra::sdk (or fedra::core)"
#endif

#ifndef FEDRA_VERSION
#define FEDRA_VERSION "unknown"
#endif

#define FEDRA_PLUGIN(register_function)                                                   \
  extern "C" int fedra_plugin_abi() { return FEDRA_PLUGIN_ABI; }                          \
  extern "C" const char* fedra_plugin_version() { return FEDRA_VERSION; }                 \
  extern "C" void fedra_plugin_register(::fedra::StrategyRegistry* registry) {            \
    register_function(*registry);                                                         \
  }

namespace fedra {

struct LoadedPlugin {
  std::string path;
  std::vector<std::string> strategies;  // the names it added
};

// Loads the library at `path` and adds its strategies to `registry`. Throws Error naming the
// file and the problem: cannot be opened, not a Fedra plugin (a missing symbol), built against
// another plugin ABI (both versions named), or a strategy name already registered. The library
// stays loaded for the life of the process.
LoadedPlugin load_plugin(const std::string& path, StrategyRegistry& registry);

// The values of every `--plugin PATH` / `--plugin=PATH` in argv (read before the options are
// parsed, because plugins add options).
std::vector<std::string> plugin_arguments(int argc, const char* const argv[]);

}  // namespace fedra
