// fedra: the command-line front end. The registry of strategies is filled here, explicitly.
#include <iostream>
#include <string>

#include <spdlog/spdlog.h>

#include "apps/fedra/cli.h"
#include "apps/fedra/export.h"
#include "apps/fedra/simulate.h"
#include "apps/fedra/train.h"
#include "core/kit/plugin.h"
#include "core/system/log.h"
#include "core/system/process.h"
#include "core/system/stop.h"
#include "strategies/builtin.h"
#include "transport/codec.h"

namespace {

constexpr const char* kUsage =
    "Usage: fedra COMMAND [options]\n"
    "\n"
    "Commands:\n"
    "  simulate      run a coordinator and N workers on this machine (loopback TCP)\n"
    "  coordinator   accept workers and drive the training job\n"
    "  worker        hold private data and train for a coordinator\n"
    "  train         train the whole model in one process (the centralised baseline)\n"
    "  certs         make a test CA and TLS certificates (docs/security.md)\n"
    "  export        write a run's checkpoint as a TorchScript model.pt\n"
    "  strategies    list the training strategies this binary can run\n"
    "  version       print the Fedra and protocol versions\n"
    "\n"
    "`fedra COMMAND --help` lists a command's options. Quick start:\n"
    "  fedra simulate --config experiments/fedavg-fmnist.cfg --out runs/fedavg\n";

int list_strategies(const fedra::StrategyRegistry& registry) {
  for (const auto& s : registry.list()) {
    std::cout << fmt::format("{:<12} {}\n", s.name, s.description);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  using fedra::cli::Command;
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h" ||
      std::string(argv[1]) == "help") {
    std::cout << kUsage;
    return argc < 2 ? 2 : 0;
  }
  fedra::use_fast_blas_kernels(argv);
  const std::string cmd = argv[1];
  fedra::tune_allocator();
  fedra::raise_open_file_limit();
  fedra::StrategyRegistry registry;
  fedra::register_builtin_strategies(registry);
  try {
    for (const auto& path : fedra::plugin_arguments(argc, argv)) fedra::load_plugin(path, registry);
  } catch (const fedra::Error& e) {
    std::cerr << "fedra " << cmd << ": " << e.what() << "\n";
    return 2;
  }

  if (cmd == "strategies") return list_strategies(registry);
  if (cmd == "export") {
    try {
      return fedra::cli::run_export(argc - 1, argv + 1);
    } catch (const fedra::Error& e) {
      std::cerr << "fedra export: " << e.what() << "\n";
      return 2;
    }
  }
  if (cmd == "version") {
    std::cout << fmt::format("fedra {} (wire protocol {})\n", FEDRA_VERSION,
                             fedra::transport::kProtocolVersion);
    return 0;
  }
  Command command;
  if (cmd == "coordinator") command = Command::kCoordinator;
  else if (cmd == "worker") command = Command::kWorker;
  else if (cmd == "simulate") command = Command::kSimulate;
  else if (cmd == "train") command = Command::kTrain;
  else if (cmd == "certs") command = Command::kCerts;
  else {
    std::cerr << "fedra: unknown command '" << cmd << "'\n\n" << kUsage;
    return 2;
  }

  try {
    const auto parsed = fedra::cli::parse(command, argc - 1, argv + 1, registry);
    if (parsed.help) {
      std::cout << fedra::cli::help(command, registry, parsed.vm);
      return 0;
    }
    const auto& vm = parsed.vm;
    // SIGINT/SIGTERM end a coordinator's wait or a training run cleanly (summary.json says
    // "interrupted"); a worker keeps the default action and dies at once.
    auto stop = std::make_shared<fedra::StopSignal>();
    if (command != Command::kWorker && command != Command::kCerts) fedra::install_stop_handlers(stop);
    const std::string level = vm["log-level"].as<std::string>();
    switch (command) {
      case Command::kCoordinator: {
        fedra::init_logging("coordinator", level);
        auto config = fedra::cli::coordinator_config(vm, registry);
        config.cohort.stop = stop;
        fedra::Coordinator coordinator(config, registry);
        return coordinator.run();
      }
      case Command::kWorker: {
        const auto config = fedra::cli::worker_config(vm);
        fedra::init_logging(config.name.empty() ? "worker" : config.name, level);
        if (!config.placement.empty()) spdlog::info("placement: {}", config.placement);
        const int64_t virtual_clients = vm["virtual-clients"].as<int64_t>();
        if (virtual_clients > 1) return fedra::run_virtual_clients(config, virtual_clients, registry);
        return fedra::run_worker(config, registry);
      }
      case Command::kSimulate:
        fedra::init_logging("coordinator", level);
        return fedra::cli::run_simulation(vm, registry, level, stop);
      case Command::kTrain:
        fedra::init_logging("train", level);
        return fedra::cli::run_training(vm, *stop);
      case Command::kCerts:
        return fedra::cli::run_certs(vm);
    }
  } catch (const fedra::Error& e) {
    std::cerr << "fedra " << cmd << ": " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "fedra " << cmd << ": unexpected error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
