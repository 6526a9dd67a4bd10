// A plugin that claims another plugin ABI: Fedra must refuse it, naming both versions.
#include "core/kit/registry.h"

extern "C" int fedra_plugin_abi() { return 999; }
extern "C" const char* fedra_plugin_version() { return "9.9.9"; }
extern "C" void fedra_plugin_register(fedra::StrategyRegistry*) {}
