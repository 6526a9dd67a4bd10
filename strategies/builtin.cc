#include "strategies/builtin.h"

#include "strategies/fedavg/fedavg.h"
#include "strategies/gradsum/gradsum.h"
#include "strategies/psl/psl.h"
#include "strategies/split/split.h"

namespace fedra {

void register_builtin_strategies(StrategyRegistry& registry) {
  registry.add(fedavg::fedavg_strategy());
  registry.add(gradsum::gradsum_strategy());
  registry.add(split::split_strategy());
  registry.add(psl::psl_strategy());
}

}  // namespace fedra
