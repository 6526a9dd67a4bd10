#include "strategies/builtin.h"

#include "strategies/async/async.h"
#include "strategies/fedavg/fedavg.h"
#include "strategies/gradsum/gradsum.h"
#include "strategies/pipeline/pipeline.h"
#include "strategies/psl/psl.h"
#include "strategies/split/split.h"
#include "strategies/tensor/tensor.h"

namespace fedra {

void register_builtin_strategies(StrategyRegistry& registry) {
  registry.add(fedavg::fedavg_strategy());
  registry.add(gradsum::gradsum_strategy());
  registry.add(split::split_strategy());
  registry.add(psl::psl_strategy());
  registry.add(tensor::tensor_strategy());
  registry.add(pipeline::pipeline_strategy());
  registry.add(async::fedasync_strategy());
  registry.add(async::fedbuff_strategy());
}

}  // namespace fedra
