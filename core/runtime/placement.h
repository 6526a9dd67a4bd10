// Placement: where a worker process sits in a job a scheduler started, read from the scheduler's
// environment, and where its coordinator is.
//
// `fedra worker --client auto` reads one of the conventions below (docs/deploy.md):
//   Slurm (srun)                       SLURM_PROCID, SLURM_NTASKS
//   torchrun, Kubeflow's PyTorchJob    RANK, WORLD_SIZE (and MASTER_ADDR, MASTER_PORT: the coordinator)
//   Kubernetes Indexed Job             JOB_COMPLETION_INDEX (the count: --client auto/N)
// A rank offset K reserves ranks 0..K-1 for processes that are not workers (a PyTorchJob's Master
// replica running the coordinator, or task 0 of `srun --multi-prog`): rank r is client r-K of
// size-K. Variables that are set but disagree, half a convention (a rank without its size), or
// values that are not numbers are errors that name the variables.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "transport/endpoint.h"

namespace fedra {

using EnvLookup = std::function<std::optional<std::string>(const std::string& name)>;

// The process's environment (getenv).
EnvLookup process_environment();

struct Placement {
  int64_t index = 0;        // client I of --client I/N
  int64_t count = 1;        // N
  std::string source;       // the variables it came from, for the log: "SLURM_PROCID=2, SLURM_NTASKS=4 (Slurm)"
  std::string coordinator;  // HOST:PORT from MASTER_ADDR and MASTER_PORT; empty when they are not set
};

// True for the --client forms that read the environment: "auto" and "auto/N".
bool is_auto_placement(const std::string& client_spec);

// Resolves `client_spec` ("auto" or "auto/N"). Throws fedra::Error with the variables looked at
// when none of the conventions is set, when two disagree, or when one is incomplete or invalid.
Placement discover_placement(const std::string& client_spec, int64_t rank_offset, const EnvLookup& env);

// The coordinator's address for a worker: "file:PATH" waits (up to `timeout`) for PATH to hold
// HOST:PORT, as the coordinator's --address-file writes it on a shared directory; any other
// value is returned as it is.
std::string resolve_coordinator_address(const std::string& spec, std::chrono::milliseconds timeout);


// The address a process tells others it is reached at (transport/endpoint.h).
using transport::advertised_address;

}  // namespace fedra
