#include "core/runtime/placement.h"

#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "transport/error.h"

namespace fedra {
namespace {

// One convention's reading of the environment.
struct Reading {
  const char* what;  // "Slurm"
  int64_t rank = 0;
  std::optional<int64_t> size;  // absent for an Indexed Job
  std::string vars;             // "SLURM_PROCID=2, SLURM_NTASKS=4"
};

int64_t parse_count(const std::string& name, const std::string& value) {
  size_t used = 0;
  int64_t v = -1;
  try {
    v = std::stoll(value, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  FEDRA_REQUIRE(used == value.size() && !value.empty() && v >= 0,
                "{}='{}' is not a non-negative whole number (the scheduler sets it; check the job's environment)",
                name, value);
  return v;
}

// A rank variable and its size variable: both or neither.
std::optional<Reading> read_pair(const EnvLookup& env, const char* what, const char* rank_var, const char* size_var,
                                 const char* hint) {
  const auto rank = env(rank_var), size = env(size_var);
  if (!rank && !size) return std::nullopt;
  FEDRA_REQUIRE(rank && size, "{} is set but {} is not ({}): {}", rank ? rank_var : size_var,
                rank ? size_var : rank_var, what, hint);
  Reading r{what, parse_count(rank_var, *rank), parse_count(size_var, *size),
            fmt::format("{}={}, {}={}", rank_var, *rank, size_var, *size)};
  FEDRA_REQUIRE(r.rank < *r.size, "{} says rank {} of {}: a rank must be below the size ({})", r.vars, r.rank,
                *r.size, what);
  return r;
}

}  // namespace

EnvLookup process_environment() {
  return [](const std::string& name) -> std::optional<std::string> {
    const char* v = std::getenv(name.c_str());
    if (v == nullptr) return std::nullopt;
    return std::string(v);
  };
}

bool is_auto_placement(const std::string& client_spec) {
  return client_spec == "auto" || client_spec.rfind("auto/", 0) == 0;
}

namespace {

// The placements the environment describes: Slurm's, torchrun's or a PyTorchJob's, an Indexed
// Job's (several, when several are set: they must agree).
std::vector<Reading> read_schedulers(const EnvLookup& env, const std::string& client_spec) {
  std::vector<Reading> found;
  if (auto r = read_pair(env, "Slurm", "SLURM_PROCID", "SLURM_NTASKS",
                         "start the workers with srun, which sets both for every task")) {
    found.push_back(*r);
  }
  if (auto r = read_pair(env, "torchrun/PyTorchJob", "RANK", "WORLD_SIZE",
                         "the launcher sets both; set the missing one or unset the other")) {
    found.push_back(*r);
  }
  if (const auto index = env("JOB_COMPLETION_INDEX")) {
    found.push_back(Reading{"Kubernetes Indexed Job", parse_count("JOB_COMPLETION_INDEX", *index), std::nullopt,
                            fmt::format("JOB_COMPLETION_INDEX={}", *index)});
  }
  FEDRA_REQUIRE(!found.empty(),
                "--client {} found no scheduler placement in the environment: it reads SLURM_PROCID and "
                "SLURM_NTASKS (srun), RANK and WORLD_SIZE (torchrun, Kubeflow PyTorchJob) or JOB_COMPLETION_INDEX "
                "(Kubernetes Indexed Job), and none is set. Outside a scheduler give --client I/N",
                client_spec);
  return found;
}

// The coordinator's address from MASTER_ADDR and MASTER_PORT, when they are set ("" otherwise).
std::string coordinator_from_env(const EnvLookup& env) {
  const auto addr = env("MASTER_ADDR"), port = env("MASTER_PORT");
  if (!addr && !port) return "";
  FEDRA_REQUIRE(addr && port && !addr->empty() && !port->empty(),
                "{} is set but {} is not: the coordinator's address needs both (or give --connect HOST:PORT)",
                addr ? "MASTER_ADDR" : "MASTER_PORT", addr ? "MASTER_PORT" : "MASTER_ADDR");
  const bool v6 = addr->find(':') != std::string::npos && addr->front() != '[';
  const std::string coordinator = v6 ? fmt::format("[{}]:{}", *addr, *port) : fmt::format("{}:{}", *addr, *port);
  transport::parse_endpoint(coordinator);  // a clear error for a bad port now
  return coordinator;
}

}  // namespace

Placement discover_placement(const std::string& client_spec, int64_t rank_offset, const EnvLookup& env) {
  FEDRA_REQUIRE(is_auto_placement(client_spec), "--client '{}' is not auto or auto/N", client_spec);
  FEDRA_REQUIRE(rank_offset >= 0, "--rank-offset must be >= 0, got {}", rank_offset);
  std::optional<int64_t> given;
  if (client_spec != "auto") {
    const std::string n = client_spec.substr(5);
    try {
      given = parse_count("--client auto/N's N", n);
    } catch (const Error&) {
      FEDRA_FAIL("--client '{}': N must be a whole number of workers >= 1 (e.g. auto/4)", client_spec);
    }
    FEDRA_REQUIRE(*given >= 1, "--client '{}': N must be >= 1", client_spec);
  }

  const std::vector<Reading> found = read_schedulers(env, client_spec);

  // Each reading as a client index and count, after the offset.
  struct Candidate {
    int64_t index;
    std::optional<int64_t> count;
  };
  std::vector<Candidate> candidates;
  for (const auto& r : found) {
    FEDRA_REQUIRE(r.rank >= rank_offset,
                  "{} ({}) is rank {}, which --rank-offset {} keeps for a process that is not a worker (the "
                  "coordinator's): start the coordinator there, or lower --rank-offset",
                  r.vars, r.what, r.rank, rank_offset);
    std::optional<int64_t> count;
    if (r.size) {
      FEDRA_REQUIRE(*r.size > rank_offset, "{} leaves no workers after --rank-offset {}", r.vars, rank_offset);
      count = *r.size - rank_offset;
    }
    candidates.push_back({r.rank - rank_offset, count});
  }
  for (size_t i = 1; i < found.size(); ++i) {
    const bool same = candidates[i].index == candidates[0].index &&
                      (!candidates[i].count || !candidates[0].count || *candidates[i].count == *candidates[0].count);
    FEDRA_REQUIRE(same,
                  "the environment names two different places for this worker: {} ({}) and {} ({}); unset the "
                  "variables of the one that does not describe this job",
                  found[0].vars, found[0].what, found[i].vars, found[i].what);
  }

  Placement p;
  p.index = candidates[0].index;
  std::optional<int64_t> count;
  std::string count_from;
  for (size_t i = 0; i < found.size() && !count; ++i) {
    if (candidates[i].count) {
      count = candidates[i].count;
      count_from = found[i].vars;
    }
  }
  if (given) {
    FEDRA_REQUIRE(!count || *count == *given,
                  "--client {} says {} workers but {} says {}{}: drop the /N or fix the job's size", client_spec,
                  *given, count_from, *count,
                  rank_offset > 0 ? fmt::format(" (after --rank-offset {})", rank_offset) : "");
    count = given;
  }
  FEDRA_REQUIRE(count.has_value(),
                "{} ({}) gives this worker's index but not the number of workers: give --client auto/N with N "
                "the Job's completions",
                found[0].vars, found[0].what);
  FEDRA_REQUIRE(p.index < *count, "{} makes this worker client {} of {}: the index must be below the count",
                found[0].vars, p.index, *count);
  p.count = *count;
  std::vector<std::string> parts;
  for (const auto& r : found) parts.push_back(fmt::format("{} ({})", r.vars, r.what));
  p.source = fmt::format("{}", fmt::join(parts, " and "));
  if (rank_offset > 0) p.source += fmt::format(", --rank-offset {}", rank_offset);
  if (given) p.source += fmt::format(", --client {}", client_spec);

  p.coordinator = coordinator_from_env(env);
  return p;
}

std::string resolve_coordinator_address(const std::string& spec, std::chrono::milliseconds timeout) {
  if (spec.rfind("file:", 0) != 0) return spec;
  const std::string path = spec.substr(5);
  FEDRA_REQUIRE(!path.empty(), "--connect file:PATH needs a path (the coordinator's --address-file)");
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    std::ifstream in(path);
    std::string line;
    if (in && std::getline(in, line) && !line.empty()) {
      while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
      try {
        transport::parse_endpoint(line);
      } catch (const Error& e) {
        FEDRA_FAIL("{} (from --connect {}) does not hold HOST:PORT: {}", path, spec, e.what());
      }
      return line;
    }
    FEDRA_REQUIRE(std::chrono::steady_clock::now() < deadline,
                  "{} did not appear within {:.0f} s (--connect {}): the coordinator writes it with "
                  "--address-file once it listens; is it running, and is the directory shared with this machine?",
                  path, std::chrono::duration<double>(timeout).count(), spec);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}


}  // namespace fedra
