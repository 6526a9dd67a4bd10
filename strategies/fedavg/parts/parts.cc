// The order of FedAvg's built-in parts. Coordinator: a fleet decides who is online and times each
// update first; clip_norm shapes an update before SCAFFOLD and DP see it; secure aggregation,
// which replaces the exchange, comes last. Worker, after training: FedBN keeps its layers, the
// fleet sleeps, SCAFFOLD reads the trained model before DP clips it in place, attacks corrupt
// what DP produced, and secure aggregation sends the result.
#include "strategies/fedavg/parts/parts.h"

#include "strategies/fedavg/fedavg.h"

namespace fedra::fedavg {

std::vector<std::unique_ptr<Stage>> builtin_stages(const FedAvgOptions& o) {
  std::vector<std::unique_ptr<Stage>> stages;
  std::unique_ptr<Stage> all[] = {fleet_stage(o), clip_stage(o),   scaffold_stage(o), fedbn_stage(o),
                                  dp_stage(o),    attack_stage(o), secagg_stage(o)};
  for (auto& s : all) {
    if (s) stages.push_back(std::move(s));
  }
  return stages;
}

std::vector<std::unique_ptr<WorkerStage>> builtin_worker_stages(const Job&) {
  std::vector<std::unique_ptr<WorkerStage>> stages;
  stages.push_back(fedbn_worker_stage());
  stages.push_back(fleet_worker_stage());
  stages.push_back(scaffold_worker_stage());
  stages.push_back(dp_worker_stage());
  stages.push_back(attack_worker_stage());
  stages.push_back(secagg_worker_stage());
  return stages;
}

}  // namespace fedra::fedavg
