// FedAvg's built-in parts (strategies/fedavg/part.h says what a part is), one file each with both
// halves. Each factory returns null when the options leave its part off.
//
// Adding a part: write parts/NAME.cc with its Stage (and WorkerStage, if the worker does
// something), declare its factories here, and list them in parts.cc; its options go in
// FedAvgOptions. docs/architecture.md walks through one.
#pragma once

#include <memory>
#include <vector>

#include "strategies/fedavg/part.h"

namespace fedra::fedavg {

struct FedAvgOptions;

// The coordinator's stages the options turn on, in their order; and every worker stage (a
// worker stage acts only on a fit that carries its part's fields).
std::vector<std::unique_ptr<Stage>> builtin_stages(const FedAvgOptions& o);
std::vector<std::unique_ptr<WorkerStage>> builtin_worker_stages(const Job& job);

// rules.cc: the options' rule (the streaming weighted mean, or aggregate=median, trimmed_mean,
// krum, multi_krum holding the round's updates within hold_budget_mb), the server optimiser as a
// ServerStep, and norm clipping (clip_norm).
std::unique_ptr<Rule> options_rule(const FedAvgOptions& o);
std::unique_ptr<ServerStep> options_server_step(const FedAvgOptions& o);
std::unique_ptr<Stage> clip_stage(const FedAvgOptions& o);
// global + weighted_sum / denominator over the model's float tensors (a linear rule from a sum);
// integer buffers keep the global model's values.
NamedTensors linear_aggregate(const NamedTensors& global, const NamedTensors& weighted_sum, double denominator);

// fleet.cc: simulated device fleets and round deadlines (core/federated/fleet.h).
std::unique_ptr<Stage> fleet_stage(const FedAvgOptions& o);
std::unique_ptr<WorkerStage> fleet_worker_stage();

// scaffold.cc: SCAFFOLD's control variates (Karimireddy et al. 2020, option II).
std::unique_ptr<Stage> scaffold_stage(const FedAvgOptions& o);
std::unique_ptr<WorkerStage> scaffold_worker_stage();

// fedbn.cc: FedBN's local batch norm layers (Li et al. 2021).
std::unique_ptr<Stage> fedbn_stage(const FedAvgOptions& o);
std::unique_ptr<WorkerStage> fedbn_worker_stage();

// privacy.cc: DP-FedAvg with its accountant (core/federated/privacy.h), server- or client-side.
std::unique_ptr<Stage> dp_stage(const FedAvgOptions& o);
std::unique_ptr<WorkerStage> dp_worker_stage();

// attack.cc: Byzantine workers for tests (--fedavg.testing.byzantine).
std::unique_ptr<Stage> attack_stage(const FedAvgOptions& o);
std::unique_ptr<WorkerStage> attack_worker_stage();

// secure.cc: secure aggregation (strategies/fedavg/secagg.h runs the protocol).
std::unique_ptr<Stage> secagg_stage(const FedAvgOptions& o);
std::unique_ptr<WorkerStage> secagg_worker_stage();

}  // namespace fedra::fedavg
