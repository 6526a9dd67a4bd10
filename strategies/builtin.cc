#include "strategies/builtin.h"

#include "strategies/fedavg/fedavg.h"

namespace fedra {

void register_builtin_strategies(StrategyRegistry& registry) {
  registry.add(fedavg::fedavg_strategy());
}

}  // namespace fedra
