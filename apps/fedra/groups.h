// The options of the `fedra` program, grouped once (apps/fedra/cli.h says how commands use them).
#pragma once

#include <boost/program_options.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include "apps/fedra/cli.h"
#include "core/kit/registry.h"

namespace fedra::cli {

// The range of a numeric option. Every number from the command line or a config file is checked
// against its range as it is read (cli.cc), so a value that cannot mean anything (-1 workers, an
// infinite timeout, a NaN fraction) is refused naming the option, before anything runs.
struct NumberRange {
  double lo = 0, hi = 0;
  bool lo_open = false, hi_open = false;  // (lo, ...: lo itself excluded
  const char* unit = "";                  // " seconds", " bytes": what the number counts
};

// The range of option `name` of `command` ("coordinator", "certs", ...: --workers means one thing
// to certs and another to simulate); null for an option that is not a number.
const NumberRange* number_range(const std::string& command, const std::string& name);

struct Groups {
  po::options_description generic{"General"};
  po::options_description job{"Job (the coordinator sends it to every worker)"};
  po::options_description seed{"Reproducibility"};
  po::options_description network{"Network and resources"};
  po::options_description security{"Security (docs/security.md)"};
  po::options_description coordinator_security{"Coordinator security"};
  po::options_description worker_security{"Worker security"};
  po::options_description certs{"Certificates"};
  po::options_description listen{"Listening"};
  po::options_description reach{"Reachability"};
  po::options_description coordinator{"Coordinator"};
  po::options_description output{"Output"};
  po::options_description worker{"Worker"};
  po::options_description data{"Data"};
  po::options_description simulate{"Simulation"};
  po::options_description train{"Training in one process"};
  po::options_description train_model{"Model and data"};  // train's subset of job + data
  // Every strategy's options, testing ones included: what the parser accepts.
  po::options_description strategies{"Strategy options"};
  const StrategyRegistry& registry;

  explicit Groups(const StrategyRegistry& strategy_registry);

  // The options of strategy `s`, as --NAME.OPTION; enum options list their choices.
  static void add_strategy(po::options_description& d, const StrategyInfo& s, bool testing) {
    for (const auto& o : s.options) {
      if (o.testing && !testing) continue;
      std::string help = o.help;
      if (!o.choices.empty()) help += fmt::format(" {{{}}}", fmt::join(o.choices, "|"));
      d.add_options()((s.name + "." + o.name).c_str(), po::value<std::string>()->default_value(o.default_value),
                      help.c_str());
    }
  }

  // The help of one strategy's options: user options, and the testing ones when asked.
  po::options_description strategy_help(const StrategyInfo& s, bool testing) const {
    po::options_description g(s.name + " options (--" + s.name + ".NAME, or [" + s.name + "] in a config file)");
    add_strategy(g, s, testing);
    return g;
  }

  // The command's own groups, without strategy options.
  po::options_description command_groups(Command c) const {
    po::options_description d;
    d.add(generic);
    switch (c) {
      case Command::kCoordinator:
        d.add(job).add(seed).add(listen).add(reach).add(coordinator).add(output).add(network);
        d.add(security).add(coordinator_security);
        break;
      case Command::kWorker:
        d.add(worker).add(reach).add(data).add(seed).add(network).add(security).add(worker_security);
        break;
      case Command::kCerts:
        d.add(certs);
        break;
      case Command::kSimulate:
        d.add(job).add(seed).add(data).add(simulate).add(coordinator).add(output).add(network);
        break;
      case Command::kTrain:
        d.add(train_model).add(seed).add(train).add(output).add(network);
        break;
    }
    return d;
  }

  // What the command line of `c` accepts: every strategy's options, testing ones included.
  po::options_description for_command(Command c) const {
    po::options_description d = command_groups(c);
    if (takes_strategy(c)) d.add(strategies);
    return d;
  }

  static bool takes_strategy(Command c) {
    return c == Command::kCoordinator || c == Command::kSimulate;
  }

  // What --help shows: the command's groups and the options of the chosen strategy (all of
  // them with --help-all), testing options only with --help-testing.
  po::options_description help_for(Command c, const po::variables_map& vm) const {
    po::options_description d = command_groups(c);
    if (!takes_strategy(c)) return d;
    const bool all = vm.count("help-all") != 0;
    const bool testing = vm.count("help-testing") != 0;
    const std::string chosen = vm.count("strategy") ? vm["strategy"].as<std::string>() : "fedavg";
    for (const auto& s : registry.list()) {
      if (all || s.name == chosen) d.add(strategy_help(s, testing));
    }
    return d;
  }

  po::options_description everything() const {
    po::options_description d;
    d.add(generic).add(job).add(seed).add(network).add(listen).add(reach).add(coordinator).add(output);
    d.add(security).add(coordinator_security).add(worker_security);
    d.add(worker).add(data).add(simulate).add(train);
    d.add(strategies);
    return d;
  }

 private:
  void define_general();
  void define_network();
  void define_coordinator();
  void define_worker();
  void define_simulate_and_train();
};

}  // namespace fedra::cli
