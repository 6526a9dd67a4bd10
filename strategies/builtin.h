// The strategies that ship with Fedra. Called from main() to fill the registry explicitly.
#pragma once

#include "core/kit/registry.h"

namespace fedra {

void register_builtin_strategies(StrategyRegistry& registry);

}  // namespace fedra
