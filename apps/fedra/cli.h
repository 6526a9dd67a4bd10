// Command-line and config-file options of the `fedra` program.
//
// Options are grouped once (job, network, coordinator, worker, data, simulation, and one group per
// registered strategy) and each command shows the groups it uses. A config file (--config FILE,
// INI syntax) may hold any option of any group, so one file drives `simulate`, `coordinator`
// and `worker` alike; each command reads what concerns it. Strategy options live in a section
// named after the strategy ([fedavg] rounds = 10) or on the command line as --fedavg.rounds 10.
// The command line wins over the file.
#pragma once

#include <map>
#include <string>
#include <vector>

#include <boost/program_options.hpp>

#include "core/kit/registry.h"
#include "core/runtime/coordinator.h"
#include "core/runtime/worker.h"

namespace fedra::cli {

namespace po = boost::program_options;

enum class Command { kCoordinator, kWorker, kSimulate, kTrain, kCerts };

struct Parsed {
  po::variables_map vm;
  bool help = false;
};

// Parses argv (after the command word) and the --config file. Throws Error with a message
// that names the offending option or config line.
Parsed parse(Command command, int argc, const char* const argv[], const StrategyRegistry& registry);
// The --help text of a command: its options and, for commands that run a strategy, the options of
// the one --strategy names (--help-all: every strategy's; --help-testing adds fault injection).
std::string help(Command command, const StrategyRegistry& registry, const po::variables_map& vm);

// Every option with its value (defaults included), for summary.json; of the strategies' options
// only those of the strategy run.
std::map<std::string, std::string> resolved(const po::variables_map& vm, const StrategyRegistry& registry);

CoordinatorConfig coordinator_config(const po::variables_map& vm, const StrategyRegistry& registry);
WorkerConfig worker_config(const po::variables_map& vm);

// `fedra certs`: writes a test CA and certificates (transport/tcp/tls.h); returns the exit code.
int run_certs(const po::variables_map& vm);

}  // namespace fedra::cli
