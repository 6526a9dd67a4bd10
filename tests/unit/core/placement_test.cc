#include "tests/testing.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <thread>

#include "core/runtime/placement.h"
#include "transport/error.h"

using namespace fedra;

namespace {

EnvLookup env_of(std::map<std::string, std::string> vars) {
  return [vars = std::move(vars)](const std::string& name) -> std::optional<std::string> {
    const auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

// The message of the error discover_placement throws for `vars`.
std::string error_of(const std::string& spec, int64_t offset, std::map<std::string, std::string> vars) {
  try {
    discover_placement(spec, offset, env_of(std::move(vars)));
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

bool has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

}  // namespace

TEST_CASE("placement: each scheduler's convention gives the client index and count") {
  SUBCASE("Slurm srun") {
    const auto p = discover_placement("auto", 0, env_of({{"SLURM_PROCID", "2"}, {"SLURM_NTASKS", "4"}}));
    CHECK(p.index == 2);
    CHECK(p.count == 4);
    CHECK(p.source == "SLURM_PROCID=2, SLURM_NTASKS=4 (Slurm)");
    CHECK(p.coordinator.empty());
  }
  SUBCASE("torchrun / PyTorchJob, with the coordinator's address") {
    const auto p = discover_placement(
        "auto", 0, env_of({{"RANK", "1"}, {"WORLD_SIZE", "3"}, {"MASTER_ADDR", "fedra-master-0"}, {"MASTER_PORT", "7000"}}));
    CHECK(p.index == 1);
    CHECK(p.count == 3);
    CHECK(p.coordinator == "fedra-master-0:7000");
    CHECK(has(p.source, "torchrun/PyTorchJob"));
  }
  SUBCASE("an IPv6 MASTER_ADDR is bracketed") {
    const auto p = discover_placement(
        "auto", 0, env_of({{"RANK", "0"}, {"WORLD_SIZE", "1"}, {"MASTER_ADDR", "fd00::1"}, {"MASTER_PORT", "29500"}}));
    CHECK(p.coordinator == "[fd00::1]:29500");
  }
  SUBCASE("Kubernetes Indexed Job: the count comes from auto/N") {
    const auto p = discover_placement("auto/5", 0, env_of({{"JOB_COMPLETION_INDEX", "4"}}));
    CHECK(p.index == 4);
    CHECK(p.count == 5);
    CHECK(has(p.source, "JOB_COMPLETION_INDEX=4 (Kubernetes Indexed Job)"));
  }
  SUBCASE("a rank offset keeps rank 0 for the coordinator (PyTorchJob Master, srun --multi-prog)") {
    const auto p = discover_placement("auto", 1, env_of({{"RANK", "3"}, {"WORLD_SIZE", "4"}}));
    CHECK(p.index == 2);
    CHECK(p.count == 3);
    CHECK(has(p.source, "--rank-offset 1"));
  }
  SUBCASE("two conventions that agree (torchrun under srun) are both named") {
    const auto p = discover_placement(
        "auto", 0, env_of({{"SLURM_PROCID", "1"}, {"SLURM_NTASKS", "2"}, {"RANK", "1"}, {"WORLD_SIZE", "2"}}));
    CHECK(p.index == 1);
    CHECK(p.count == 2);
    CHECK(has(p.source, "Slurm"));
    CHECK(has(p.source, "torchrun"));
  }
  SUBCASE("auto/N that matches the environment's size") {
    const auto p = discover_placement("auto/4", 0, env_of({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "4"}}));
    CHECK(p.count == 4);
  }
  CHECK(is_auto_placement("auto"));
  CHECK(is_auto_placement("auto/3"));
  CHECK_FALSE(is_auto_placement("0/1"));
  CHECK_FALSE(is_auto_placement("automatic"));
}

TEST_CASE("placement: missing, half-set, invalid and conflicting variables are errors that name them") {
  const std::string none = error_of("auto", 0, {});
  CHECK(has(none, "SLURM_PROCID"));
  CHECK(has(none, "RANK and WORLD_SIZE"));
  CHECK(has(none, "JOB_COMPLETION_INDEX"));
  CHECK(has(none, "--client I/N"));

  CHECK(has(error_of("auto", 0, {{"SLURM_PROCID", "1"}}), "SLURM_PROCID is set but SLURM_NTASKS is not"));
  CHECK(has(error_of("auto", 0, {{"SLURM_NTASKS", "4"}}), "SLURM_NTASKS is set but SLURM_PROCID is not"));
  CHECK(has(error_of("auto", 0, {{"WORLD_SIZE", "4"}}), "WORLD_SIZE is set but RANK is not"));
  CHECK(has(error_of("auto", 0, {{"RANK", "x1"}, {"WORLD_SIZE", "4"}}), "RANK='x1' is not a non-negative whole number"));
  CHECK(has(error_of("auto", 0, {{"RANK", "-1"}, {"WORLD_SIZE", "4"}}), "RANK='-1'"));
  CHECK(has(error_of("auto", 0, {{"RANK", "4"}, {"WORLD_SIZE", "4"}}), "rank 4 of 4"));

  const std::string conflict =
      error_of("auto", 0, {{"SLURM_PROCID", "1"}, {"SLURM_NTASKS", "2"}, {"RANK", "0"}, {"WORLD_SIZE", "2"}});
  CHECK(has(conflict, "two different places"));
  CHECK(has(conflict, "SLURM_PROCID=1, SLURM_NTASKS=2"));
  CHECK(has(conflict, "RANK=0, WORLD_SIZE=2"));
  const std::string sizes =
      error_of("auto", 0, {{"SLURM_PROCID", "1"}, {"SLURM_NTASKS", "2"}, {"RANK", "1"}, {"WORLD_SIZE", "3"}});
  CHECK(has(sizes, "two different places"));
  CHECK(has(error_of("auto", 0, {{"JOB_COMPLETION_INDEX", "1"}, {"RANK", "2"}, {"WORLD_SIZE", "3"}}),
            "JOB_COMPLETION_INDEX=1"));

  CHECK(has(error_of("auto", 0, {{"JOB_COMPLETION_INDEX", "2"}}), "give --client auto/N"));
  CHECK(has(error_of("auto/2", 0, {{"JOB_COMPLETION_INDEX", "2"}}), "client 2 of 2"));
  CHECK(has(error_of("auto/3", 0, {{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "4"}}),
            "--client auto/3 says 3 workers but SLURM_PROCID=0, SLURM_NTASKS=4 says 4"));
  CHECK(has(error_of("auto/x", 0, {{"JOB_COMPLETION_INDEX", "0"}}), "N must be a whole number"));
  CHECK(has(error_of("auto/0", 0, {{"JOB_COMPLETION_INDEX", "0"}}), "N must be >= 1"));

  CHECK(has(error_of("auto", 1, {{"RANK", "0"}, {"WORLD_SIZE", "3"}}), "--rank-offset 1 keeps"));
  CHECK(has(error_of("auto", 1, {{"RANK", "0"}, {"WORLD_SIZE", "1"}}), "--rank-offset 1"));
  CHECK(has(error_of("auto", 0, {{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}}),
            "MASTER_ADDR is set but MASTER_PORT is not"));
  CHECK(has(error_of("auto", 0, {{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "70000"}}),
            "not a port number"));
}

TEST_CASE("placement: the coordinator's address file") {
  const auto dir = std::filesystem::temp_directory_path() / ("fedra-placement-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "coordinator.addr").string();

  CHECK(resolve_coordinator_address("10.0.0.1:7000", std::chrono::milliseconds(0)) == "10.0.0.1:7000");
  // Written a little later by another thread, as by a coordinator starting after its workers.
  std::thread writer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    std::ofstream(path) << "node-3:41234\n";
  });
  CHECK(resolve_coordinator_address("file:" + path, std::chrono::milliseconds(10000)) == "node-3:41234");
  writer.join();

  const std::string missing = (dir / "never").string();
  try {
    resolve_coordinator_address("file:" + missing, std::chrono::milliseconds(200));
    FAIL("no error for a file that never appears");
  } catch (const Error& e) {
    CHECK(has(e.what(), "did not appear within"));
    CHECK(has(e.what(), "--address-file"));
  }
  std::ofstream(path) << "not an address\n";
  CHECK_THROWS_AS(resolve_coordinator_address("file:" + path, std::chrono::milliseconds(200)), Error);

  CHECK(advertised_address("", "10.1.2.3:7000") == "10.1.2.3:7000");
  CHECK(advertised_address("coord.example", "0.0.0.0:41000") == "coord.example:41000");
  CHECK(advertised_address("coord.example:443", "0.0.0.0:41000") == "coord.example:443");
  CHECK(advertised_address("fd00::5", "[::]:41000") == "[fd00::5]:41000");
  char host[256] = {};
  REQUIRE(::gethostname(host, sizeof(host) - 1) == 0);
  CHECK(advertised_address("", "0.0.0.0:41000") == std::string(host) + ":41000");
  std::filesystem::remove_all(dir);
}
