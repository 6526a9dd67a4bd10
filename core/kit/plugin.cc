#include "core/kit/plugin.h"

#include <dlfcn.h>

#include <filesystem>

#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

namespace fedra {

LoadedPlugin load_plugin(const std::string& path, StrategyRegistry& registry) {
  FEDRA_REQUIRE(std::filesystem::is_regular_file(path), "plugin '{}' not found", path);
  // RTLD_LOCAL: the plugin's own symbols stay private; RTLD_NOW: a missing dependency fails here.
  void* handle = dlopen(std::filesystem::absolute(path).c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* why = dlerror();
    FEDRA_FAIL("cannot load plugin '{}': {}", path, why ? why : "unknown error");
  }
  auto symbol = [&](const char* name) {
    dlerror();
    void* p = dlsym(handle, name);
    FEDRA_REQUIRE(p != nullptr,
                  "'{}' is not a Fedra plugin: it does not export {}() (write FEDRA_PLUGIN(your_register_function) "
                  "in one of its sources; docs/plugins.md)",
                  path, name);
    return p;
  };
  using AbiFn = int (*)();
  using VersionFn = const char* (*)();
  using RegisterFn = void (*)(StrategyRegistry*);
  const int abi = reinterpret_cast<AbiFn>(symbol("fedra_plugin_abi"))();
  const std::string version = reinterpret_cast<VersionFn>(symbol("fedra_plugin_version"))();
  const auto add = reinterpret_cast<RegisterFn>(symbol("fedra_plugin_register"));
  if (abi != FEDRA_PLUGIN_ABI) {
    dlclose(handle);
    FEDRA_FAIL("plugin '{}' was built against Fedra {} (plugin ABI {}); this is Fedra {} (plugin ABI {}): "
               "rebuild the plugin against this Fedra",
               path, version, abi, FEDRA_VERSION, FEDRA_PLUGIN_ABI);
  }
  StrategyRegistry mine;
  // A plugin may build on registered strategies (e.g. reuse a worker half): it sees the
  // host's strategies through `mine` only as far as it registers its own.
  add(&mine);
  LoadedPlugin loaded;
  loaded.path = path;
  for (const StrategyInfo& info : mine.list()) {
    FEDRA_REQUIRE(!registry.contains(info.name),
                  "plugin '{}' registers strategy '{}', which is already registered (built in or by an earlier "
                  "--plugin); rename one of them",
                  path, info.name);
  }
  for (const StrategyInfo& info : mine.list()) {
    loaded.strategies.push_back(info.name);
    registry.add(info);
  }
  FEDRA_REQUIRE(!loaded.strategies.empty(), "plugin '{}' registered no strategy", path);
  spdlog::debug("plugin {} (Fedra {}, ABI {}): {}", path, version, abi, fmt::join(loaded.strategies, ", "));
  return loaded;
}

std::vector<std::string> plugin_arguments(int argc, const char* const argv[]) {
  std::vector<std::string> out;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--plugin") {
      FEDRA_REQUIRE(i + 1 < argc, "--plugin needs a path to a shared library");
      out.emplace_back(argv[++i]);
    } else if (a.rfind("--plugin=", 0) == 0) {
      out.push_back(a.substr(9));
    }
  }
  return out;
}

}  // namespace fedra
