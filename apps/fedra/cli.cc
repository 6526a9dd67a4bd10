#include "apps/fedra/cli.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <sstream>
#include <thread>

#include <fmt/ranges.h>

#include "core/runtime/placement.h"
#include "transport/tcp/tls.h"

namespace fedra::cli {

namespace {

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

  explicit Groups(const StrategyRegistry& strategy_registry) : registry(strategy_registry) {
    generic.add_options()
        ("help,h", "show this help (with the options of --strategy only)")
        ("help-all", "show this help with every strategy's options")
        ("help-testing", "show this help with the strategy's fault injection for tests")
        ("config", po::value<std::string>(), "read options from this INI file (command line wins)")
        ("plugin", po::value<std::vector<std::string>>()->composing(),
         "load strategies from this shared library (repeatable; command line only; docs/plugins.md)")
        ("log-level", po::value<std::string>()->default_value("info"),
         "trace, debug, info, warn or error");
    job.add_options()
        ("strategy", po::value<std::string>()->default_value("fedavg"),
         "training scheme; `fedra strategies` lists them")
        ("model", po::value<std::string>()->default_value("mlp:784-200-200-10"),
         "model spec: mlp:IN-H1-...-OUT, cnn, lenet5, psnet, or torchscript:PATH (docs/models.md); split "
         "learning adds the cut, e.g. cnn:cut=pool1 or torchscript:net.pt,cut=NAME (docs/strategies.md)")
        ("loss", po::value<std::string>()->default_value("ce"),
         "ce (cross-entropy over classes), bce (binary or multi-label 0/1 targets), mse or l1 (regression: "
         "scored by MAE and RMSE), psl or psl2 (the partially separable loss)")
        ("fleet", po::value<std::string>(),
         "simulated device fleet for fedavg, fedasync and fedbuff (their fleet option): none, lognormal:sigma=S, "
         "stragglers:fraction=F,slowdown=X or FILE.csv, with step=, latency=, mbps=, online=, offline= "
         "(docs/fleets.md)")
        ("clock", po::value<std::string>(),
         "the fleet's clock (the strategy's clock option): wall (delays slept for real) or virtual "
         "(simulated time, reproducible from the seed)");
    seed.add_options()
        ("seed", po::value<uint64_t>()->default_value(1),
         "seed for model initialisation, worker sampling, local shuffling and the data partition");
    network.add_options()
        ("token", po::value<std::string>()->default_value(""),
         "shared secret workers must present; empty: none")
        ("max-frame-bytes", po::value<uint64_t>()->default_value(uint64_t{2} << 30),
         "largest message accepted or sent, in bytes (same on both sides)")
        ("threads", po::value<int>()->default_value(-1),
         "LibTorch threads for this process; 0: all cores; default (-1): all cores for a "
         "coordinator, 1 for a worker, since several workers often share a machine and "
         "oversubscribed OpenMP threads slow training 10-30x (give a worker with a machine of its "
         "own --threads 0)")
        ("dump-frames", po::value<std::string>(),
         "write every frame this process sends or receives to DIR (for capnp decode; docs/protocol.md)");
    security.add_options()
        ("tls-cert", po::value<std::string>(),
         "this side's certificate (PEM). Coordinator: turns TLS on (with --tls-key). Worker: "
         "presented to the coordinator for mutual TLS")
        ("tls-key", po::value<std::string>(), "the private key (PEM) of --tls-cert")
        ("tls-ca", po::value<std::string>(),
         "CA certificate (PEM) the peer's certificate must be signed by. Coordinator: every worker "
         "must present one (mutual TLS). Worker: turns TLS on and checks the coordinator's "
         "certificate, including its name");
    coordinator_security.add_options()
        ("insecure", po::bool_switch(),
         "allow plain TCP on a non-loopback --listen address (refused without it: the model and "
         "updates would cross the network readable, and anyone who can reach the port could join)");
    worker_security.add_options()
        ("tls-server-name", po::value<std::string>(),
         "name the coordinator's certificate must carry; default: the host in --connect");
    certs.add_options()
        ("out", po::value<std::string>()->default_value("certs"),
         "directory to write to; a CA already there (ca.pem + ca.key) signs the new certificates")
        ("hosts", po::value<std::string>()->default_value("127.0.0.1,localhost"),
         "comma-separated IPs and DNS names the coordinator is reached by (its certificate's "
         "names); empty: no coordinator certificate")
        ("workers", po::value<int64_t>()->default_value(0),
         "make worker certificates worker-0 .. worker-N-1")
        ("names", po::value<std::string>()->default_value(""),
         "comma-separated names of further worker certificates (NAME.pem, NAME.key)")
        ("days", po::value<int>()->default_value(30), "validity in days");
    listen.add_options()
        ("listen", po::value<std::string>()->default_value("127.0.0.1:7000"),
         "HOST:PORT to accept workers on (0.0.0.0 for all interfaces; port 0 picks one)")
        ("port-file", po::value<std::string>(), "write the bound port to this file (for scripts)")
        ("address-file", po::value<std::string>(),
         "write HOST:PORT for workers to this file once listening (on a directory the workers share: "
         "they read it with --connect file:PATH; docs/deploy.md)")
        ;
    reach.add_options()
        ("advertise", po::value<std::string>(),
         "HOST or HOST:PORT others reach this process by (NAT, containers). Coordinator: the address "
         "written to --address-file; default: the --listen host, or this machine's host name when "
         "listening on all interfaces. Worker: the address of its peer port that other workers "
         "connect to (rings, stages); default: the --peer-listen address");
    coordinator.add_options()
        ("min-workers", po::value<int64_t>(), "workers to wait for before training (simulate: --workers)")
        ("wait-timeout", po::value<double>()->default_value(120),
         "seconds to wait for min-workers before failing")
        ("handshake-timeout", po::value<double>()->default_value(10),
         "seconds a new connection has to say hello")
        ("receive-budget-mb", po::value<uint64_t>()->default_value(512),
         "MiB of incoming messages the coordinator reads at once (memory bound; larger messages "
         "are read one at a time)")
        ("test-data", po::value<std::string>(),
         "dataset spec whose test split the coordinator evaluates on; default: --dataset, or "
         "fmnist; 'none' to skip evaluation");
    output.add_options()
        ("out", po::value<std::string>(),
         "directory for metrics.jsonl and summary.json (docs/outputs.md)")
        ("resume", po::value<std::string>(),
         "continue the run in this directory from its last checkpoint (every built-in strategy "
         "writes them, see --checkpoint-every); give the same options as the first time")
        ("checkpoint-every", po::value<int64_t>()->default_value(1),
         "with --out: checkpoint after every Nth round (a step-driven strategy's round is its "
         "steps_per_round steps); 0 = only by --checkpoint-seconds and after the last round")
        ("checkpoint-seconds", po::value<double>()->default_value(0),
         "also checkpoint after a round that ends this long after the last checkpoint; 0 = off")
        ("checkpoint-keep", po::value<int64_t>()->default_value(1),
         "checkpoints kept in OUT/checkpoint (the newest; state.json names the newest)")
        ("round-retries", po::value<int64_t>()->default_value(0),
         "step-driven strategies (gradsum, split, psl, tensor, pipeline): roll a failed round back "
         "to its start and run it again, up to N times, once enough workers are connected: a "
         "worker restarted with the same name rejoins; 0 = a failed round ends the job");
    worker.add_options()
        ("connect", po::value<std::string>()->default_value("127.0.0.1:7000"),
         "coordinator HOST:PORT, or file:PATH to wait for the address the coordinator writes with "
         "--address-file; with --client auto and MASTER_ADDR/MASTER_PORT set, those are the default")
        ("name", po::value<std::string>(), "worker name in logs and metrics; default: host-pid")
        ("peer-listen", po::value<std::string>(),
         "HOST:PORT of this worker's peer port, where other workers of the job connect for direct "
         "links (gradsum topology=ring); default: the local address of its coordinator link, port "
         "0 (any free one). Reported to the coordinator in the hello (see --advertise)")
        ("client", po::value<std::string>()->default_value("0/1"),
         "I/N: hold part I (from 0) of the dataset partitioned N ways; 0/1: all of it. auto: I and N from the "
         "scheduler (SLURM_PROCID/SLURM_NTASKS, RANK/WORLD_SIZE, or JOB_COMPLETION_INDEX with auto/N; "
         "docs/deploy.md)")
        ("rank-offset", po::value<int64_t>()->default_value(0),
         "with --client auto: scheduler ranks below this are not workers (the coordinator's rank in a "
         "PyTorchJob or srun --multi-prog); rank r is client r - offset")
        ("virtual-clients", po::value<int64_t>()->default_value(1),
         "host this many clients in this process, I .. I+K-1 of --client I/N, each with its own "
         "connection, name (NAME-i, default worker-i) and part of the data")
        ("connect-timeout", po::value<double>()->default_value(60),
         "seconds to keep retrying the connection");
    data.add_options()
        ("dataset", po::value<std::string>()->default_value("fmnist"),
         "fmnist[:limit=N], idx:..., csv:..., synthetic:... (docs/data.md)")
        ("partition", po::value<std::string>()->default_value("iid"),
         "iid, dirichlet:alpha=A, shards:k=K or full (every worker holds all data)")
        ("holdout", po::value<double>()->default_value(0),
         "fraction of each worker's data held out of training for federated evaluation "
         "(fedavg.fed_eval_every); a seeded draw per worker")
        ("private-labels", po::bool_switch(),
         "workers leave the label histogram out of their hello, so nothing about the labels "
         "leaves a worker (for split.labels=worker)");
    simulate.add_options()
        ("workers", po::value<int64_t>()->default_value(10), "worker processes to start")
        ("clients", po::value<int64_t>()->default_value(0),
         "clients in all, spread over the --workers processes as virtual clients (each its own "
         "connection and data partition); 0: one per process")
        ("worker-threads", po::value<int>()->default_value(0),
         "LibTorch threads per worker; 0: cores / workers, at least 1")
        ("tls", po::bool_switch(),
         "mutual TLS on every connection, with a throwaway CA and certificates made in OUT/certs");
    train_model.add_options()
        ("model", po::value<std::string>()->default_value("mlp:784-200-200-10"),
         "model spec: mlp:IN-H1-...-OUT, cnn, lenet5, psnet, or torchscript:PATH (docs/models.md; a cut= is "
         "ignored)")
        ("loss", po::value<std::string>()->default_value("ce"),
         "ce (cross-entropy over classes), bce (binary or multi-label 0/1 targets), mse or l1 (regression: "
         "scored by MAE and RMSE), psl or psl2 (the partially separable loss)")
        ("dataset", po::value<std::string>()->default_value("fmnist"),
         "fmnist[:limit=N], idx:..., csv:..., synthetic:... (docs/data.md); the whole training split");
    train.add_options()
        ("epochs", po::value<int64_t>()->default_value(1), "passes over the training data")
        ("batch-size", po::value<int64_t>()->default_value(32), "mini-batch size")
        ("batches", po::value<std::string>()->default_value("shuffle"),
         "shuffle (seeded by --seed) or sequential")
        ("lr", po::value<double>()->default_value(0.05, "0.05"), "learning rate")
        ("optimizer", po::value<std::string>()->default_value("sgd"), "sgd (with momentum) or adam")
        ("momentum", po::value<double>()->default_value(0.0), "SGD momentum")
        ("weight-decay", po::value<double>()->default_value(0.0), "L2 weight decay")
        ("max-steps", po::value<int64_t>()->default_value(0), "stop after this many steps (0 = no cap)");
    for (const auto& s : registry.list()) add_strategy(strategies, s, true);
  }

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
};

const char* command_name(Command c) {
  switch (c) {
    case Command::kCoordinator: return "coordinator";
    case Command::kWorker: return "worker";
    case Command::kSimulate: return "simulate";
    case Command::kTrain: return "train";
    case Command::kCerts: return "certs";
  }
  return "?";
}

const char* command_usage(Command c) {
  switch (c) {
    case Command::kCoordinator:
      return "Usage: fedra coordinator [--config FILE] [--listen HOST:PORT] [options]\n"
             "Accepts workers, sends them the job and runs the strategy's coordinator half.\n";
    case Command::kWorker:
      return "Usage: fedra worker --connect HOST:PORT [--dataset SPEC] [--client I/N] [options]\n"
             "Holds private data, joins a coordinator and runs the strategy's worker half.\n";
    case Command::kSimulate:
      return "Usage: fedra simulate --config FILE [--workers N] [--out DIR] [options]\n"
             "Starts a coordinator and N worker processes on loopback: the same bytes on the\n"
             "same wire as a deployment across machines.\n";
    case Command::kTrain:
      return "Usage: fedra train [--config FILE] [--model SPEC] [--dataset SPEC] [--epochs N] [options]\n"
             "Trains the whole model in this one process: the centralised baseline that\n"
             "distributed runs are compared with (same model specs, data, seed and metrics files).\n";
    case Command::kCerts:
      return "Usage: fedra certs [--out DIR] [--hosts IP,NAME,...] [--workers N] [--names A,B,...]\n"
             "Makes a test CA (DIR/ca.pem, ca.key), a coordinator certificate for --hosts and\n"
             "worker certificates, for --tls-cert/--tls-key/--tls-ca. For trials and tests: a\n"
             "deployment's certificates come from the parties' own CA (docs/security.md).\n";
  }
  return "";
}

std::string any_to_string(const boost::any& v) {
  if (const auto* s = boost::any_cast<std::string>(&v)) return *s;
  if (const auto* i = boost::any_cast<int>(&v)) return std::to_string(*i);
  if (const auto* i = boost::any_cast<int64_t>(&v)) return std::to_string(*i);
  if (const auto* u = boost::any_cast<uint64_t>(&v)) return std::to_string(*u);
  if (const auto* d = boost::any_cast<double>(&v)) return fmt::format("{}", *d);
  if (const auto* l = boost::any_cast<std::vector<std::string>>(&v)) return fmt::format("{}", fmt::join(*l, ","));
  return "?";
}

std::chrono::milliseconds seconds_option(const po::variables_map& vm, const char* name) {
  const double s = vm[name].as<double>();
  FEDRA_REQUIRE(s > 0, "--{} must be > 0 seconds, got {}", name, s);
  return std::chrono::milliseconds(static_cast<int64_t>(s * 1000));
}

}  // namespace

Parsed parse(Command command, int argc, const char* const argv[], const StrategyRegistry& registry) {
  const Groups groups(registry);
  Parsed p;
  const std::string cmd = command_name(command);
  try {
    po::store(po::command_line_parser(argc, argv).options(groups.for_command(command)).run(), p.vm);
    if (p.vm.count("config")) {
      const std::string path = p.vm["config"].as<std::string>();
      FEDRA_REQUIRE(std::filesystem::is_regular_file(path), "config file '{}' not found", path);
      try {
        po::store(po::parse_config_file<char>(path.c_str(), groups.everything(), false), p.vm);
      } catch (const po::error& e) {
        FEDRA_FAIL("config file '{}': {}", path, e.what());
      }
    }
    po::notify(p.vm);
  } catch (const po::error& e) {
    FEDRA_FAIL("{}; see `fedra {} --help`", e.what(), cmd);
  }
  p.help = p.vm.count("help") != 0 || p.vm.count("help-all") != 0 || p.vm.count("help-testing") != 0;
  return p;
}

std::string help(Command command, const StrategyRegistry& registry, const po::variables_map& vm) {
  const Groups groups(registry);
  std::ostringstream out;
  out << command_usage(command) << "\n" << groups.help_for(command, vm);
  if (Groups::takes_strategy(command) && vm.count("help-all") == 0) {
    std::vector<std::string> others;
    const std::string chosen = vm.count("strategy") ? vm["strategy"].as<std::string>() : "fedavg";
    for (const auto& s : registry.list()) {
      if (s.name != chosen) others.push_back(s.name);
    }
    out << fmt::format("\nOther strategies: {}. `fedra {} --strategy NAME --help` shows one's options, "
                       "--help-all every one's.\n",
                       fmt::join(others, ", "), command_name(command));
  }
  return out.str();
}

std::map<std::string, std::string> resolved(const po::variables_map& vm, const StrategyRegistry& registry) {
  const std::string chosen = vm.count("strategy") ? vm["strategy"].as<std::string>() : "";
  std::map<std::string, std::string> out;
  for (const auto& [k, v] : vm) {
    if (k == "help") continue;
    bool other = false;  // another strategy's option: not part of this run
    for (const auto& s : registry.list()) {
      other = other || (s.name != chosen && k.rfind(s.name + ".", 0) == 0);
    }
    if (!other) out[k] = any_to_string(v.value());
  }
  return out;
}

CoordinatorConfig coordinator_config(const po::variables_map& vm, const StrategyRegistry& registry) {
  CoordinatorConfig c;
  c.cohort.listen = vm.count("listen") ? vm["listen"].as<std::string>() : "127.0.0.1:0";
  c.cohort.limits.max_frame_bytes = vm["max-frame-bytes"].as<uint64_t>();
  c.cohort.limits.validate();
  c.cohort.token = vm["token"].as<std::string>();
  c.cohort.handshake_timeout = seconds_option(vm, "handshake-timeout");
  c.cohort.receive_budget_bytes = vm["receive-budget-mb"].as<uint64_t>() << 20;
  Job& job = c.cohort.job;
  job.strategy = vm["strategy"].as<std::string>();
  job.model = vm["model"].as<std::string>();
  job.loss = vm["loss"].as<std::string>();
  job.seed = vm["seed"].as<uint64_t>();
  registry.get(job.strategy);  // a clear error for an unknown name before anything else
  job.options = OptionMap(job.strategy);
  const std::string prefix = job.strategy + ".";
  for (const auto& [k, v] : vm) {
    if (k.rfind(prefix, 0) == 0 && !v.defaulted()) job.options.set(k.substr(prefix.size()), v.as<std::string>());
  }
  // --fleet and --clock: shorthands for the strategy's own options of those names.
  for (const char* shorthand : {"fleet", "clock"}) {
    if (!vm.count(shorthand)) continue;
    const auto& options = registry.get(job.strategy).options;
    const bool has = std::any_of(options.begin(), options.end(), [&](const OptionSpec& o) { return o.name == shorthand; });
    FEDRA_REQUIRE(has, "--{}: strategy {} runs no simulated fleet (fedavg, fedasync and fedbuff do)", shorthand,
                  job.strategy);
    FEDRA_REQUIRE(!vm.count(prefix + shorthand) || vm[prefix + shorthand].defaulted(),
                  "--{0} and --{1}{0} both given; keep one", shorthand, prefix);
    job.options.set(shorthand, vm[shorthand].as<std::string>());
  }
  c.min_workers = vm.count("min-workers") ? static_cast<size_t>(vm["min-workers"].as<int64_t>()) : 1;
  FEDRA_REQUIRE(c.min_workers >= 1, "--min-workers must be >= 1");
  c.wait_timeout = seconds_option(vm, "wait-timeout");
  c.test_data = vm.count("test-data")  ? vm["test-data"].as<std::string>()
                : vm.count("dataset") ? vm["dataset"].as<std::string>()
                                      : std::string("fmnist");
  if (c.test_data == "none") c.test_data.clear();
  c.test_data_given = vm.count("test-data") != 0;
  c.threads = std::max(0, vm["threads"].as<int>());
  if (vm.count("dump-frames")) c.cohort.dump_frames_dir = vm["dump-frames"].as<std::string>();
  if (vm.count("out")) c.out_dir = vm["out"].as<std::string>();
  if (vm.count("resume")) {
    const std::string dir = vm["resume"].as<std::string>();
    FEDRA_REQUIRE(c.out_dir.empty() || std::filesystem::path(c.out_dir) == std::filesystem::path(dir),
                  "--resume {} continues that run in place; --out {} names another directory", dir, c.out_dir);
    c.out_dir = dir;
    c.resume = true;
  }
  {
    const int64_t every = vm["checkpoint-every"].as<int64_t>(), keep = vm["checkpoint-keep"].as<int64_t>();
    const int64_t retries = vm["round-retries"].as<int64_t>();
    const double seconds = vm["checkpoint-seconds"].as<double>();
    FEDRA_REQUIRE(every >= 0 && every <= UINT32_MAX, "--checkpoint-every must be >= 0, got {}", every);
    FEDRA_REQUIRE(keep >= 1 && keep <= UINT32_MAX, "--checkpoint-keep must be >= 1, got {}", keep);
    FEDRA_REQUIRE(seconds >= 0 && std::isfinite(seconds), "--checkpoint-seconds must be >= 0, got {}", seconds);
    FEDRA_REQUIRE(retries >= 0 && retries <= 1000, "--round-retries must be in 0..1000, got {}", retries);
    c.checkpoint_every = static_cast<uint32_t>(every);
    c.checkpoint_keep = static_cast<uint32_t>(keep);
    c.checkpoint_seconds = seconds;
    c.round_retries = static_cast<int>(retries);
  }
  if (vm.count("port-file")) c.port_file = vm["port-file"].as<std::string>();
  if (vm.count("address-file")) c.address_file = vm["address-file"].as<std::string>();
  if (vm.count("advertise")) {
    c.advertise = vm["advertise"].as<std::string>();
    FEDRA_REQUIRE(!c.advertise.empty(), "--advertise needs HOST or HOST:PORT");
  }
  if (vm.count("tls-cert") || vm.count("tls-key") || vm.count("tls-ca")) {
    FEDRA_REQUIRE(vm.count("tls-cert") && vm.count("tls-key"),
                  "the coordinator needs --tls-cert and --tls-key for TLS (--tls-ca alone only "
                  "says which CA signs the workers' certificates)");
    transport::tcp::TlsConfig tls;
    tls.cert_file = vm["tls-cert"].as<std::string>();
    tls.key_file = vm["tls-key"].as<std::string>();
    if (vm.count("tls-ca")) tls.ca_file = vm["tls-ca"].as<std::string>();
    c.cohort.tls = std::make_shared<transport::tcp::TlsContext>(transport::tcp::TlsRole::kServer, tls);
  }
  c.cohort.insecure = vm.count("insecure") && vm["insecure"].as<bool>();
  c.resolved_config = resolved(vm, registry);
  return c;
}

WorkerConfig worker_config(const po::variables_map& vm) {
  WorkerConfig w;
  w.coordinator = vm["connect"].as<std::string>();
  if (vm.count("name")) w.name = vm["name"].as<std::string>();
  w.token = vm["token"].as<std::string>();
  w.dataset = vm["dataset"].as<std::string>();
  w.partition = vm["partition"].as<std::string>();
  const std::string client = vm["client"].as<std::string>();
  if (is_auto_placement(client)) {
    const Placement p = discover_placement(client, vm["rank-offset"].as<int64_t>(), process_environment());
    // A process hosting K virtual clients is K consecutive clients: rank r holds r*K .. r*K+K-1.
    const int64_t k = vm.count("virtual-clients") ? std::max<int64_t>(1, vm["virtual-clients"].as<int64_t>()) : 1;
    w.client_index = p.index * k;
    w.num_clients = p.count * k;
    w.placement = k == 1 ? fmt::format("client {}/{} from {}", p.index, p.count, p.source)
                         : fmt::format("clients {}..{} of {} from {}, {} per process", w.client_index,
                                       w.client_index + k - 1, w.num_clients, p.source, k);
    if (vm["connect"].defaulted() && !p.coordinator.empty()) {
      w.coordinator = p.coordinator;
      w.placement += fmt::format("; coordinator {} from MASTER_ADDR, MASTER_PORT", p.coordinator);
    }
    if (w.name.empty() && k == 1) w.name = fmt::format("worker-{}", p.index);
  } else {
    FEDRA_REQUIRE(vm["rank-offset"].defaulted(), "--rank-offset applies to --client auto only (got --client {})",
                  client);
    const auto slash = client.find('/');
    try {
      FEDRA_REQUIRE(slash != std::string::npos, "");
      w.client_index = std::stoll(client.substr(0, slash));
      w.num_clients = std::stoll(client.substr(slash + 1));
    } catch (const std::exception&) {
      FEDRA_FAIL("--client '{}' is not I/N (e.g. 3/10: part 3, counting from 0, of 10) or auto", client);
    }
    FEDRA_REQUIRE(w.num_clients >= 1 && w.client_index >= 0 && w.client_index < w.num_clients,
                  "--client {}: need 0 <= I < N", client);
  }
  if (vm.count("peer-listen")) {
    w.peer_listen = vm["peer-listen"].as<std::string>();
    transport::parse_endpoint(w.peer_listen);  // refused here, by name, if malformed
  }
  if (vm.count("advertise")) {
    w.advertise = vm["advertise"].as<std::string>();
    FEDRA_REQUIRE(!w.advertise.empty(), "--advertise needs HOST or HOST:PORT");
  }
  w.seed = vm["seed"].as<uint64_t>();
  w.threads = vm["threads"].as<int>() < 0 ? 1 : vm["threads"].as<int>();
  w.connect_timeout = seconds_option(vm, "connect-timeout");
  w.limits.max_frame_bytes = vm["max-frame-bytes"].as<uint64_t>();
  w.limits.validate();
  if (vm.count("dump-frames")) w.dump_frames_dir = vm["dump-frames"].as<std::string>();
  w.private_labels = vm["private-labels"].as<bool>();
  w.holdout = vm["holdout"].as<double>();
  FEDRA_REQUIRE(w.holdout >= 0 && w.holdout < 1, "--holdout must be in [0, 1), got {}", w.holdout);
  if (vm.count("tls-cert") || vm.count("tls-key") || vm.count("tls-ca") || vm.count("tls-server-name")) {
    FEDRA_REQUIRE(vm.count("tls-ca"),
                  "a worker needs --tls-ca for TLS: the CA that signed the coordinator's certificate "
                  "(a worker never connects to a coordinator it cannot verify)");
    transport::tcp::TlsConfig tls;
    tls.ca_file = vm["tls-ca"].as<std::string>();
    // {client} in a path is this worker's index: one certificate per worker from one command line
    // (srun, an Indexed Job).
    if (vm.count("tls-cert")) tls.cert_file = with_client_index(vm["tls-cert"].as<std::string>(), w.client_index);
    if (vm.count("tls-key")) tls.key_file = with_client_index(vm["tls-key"].as<std::string>(), w.client_index);
    if (vm.count("tls-server-name")) tls.server_name = vm["tls-server-name"].as<std::string>();
    w.tls_cert = tls.cert_file;
    w.tls_key = tls.key_file;
    w.tls_ca = tls.ca_file;
    w.tls = std::make_shared<transport::tcp::TlsContext>(transport::tcp::TlsRole::kClient, tls);
  }
  w.coordinator = resolve_coordinator_address(w.coordinator, w.connect_timeout);
  return w;
}

namespace {

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

}  // namespace

int run_certs(const po::variables_map& vm) {
  transport::tcp::PkiRequest req;
  req.dir = vm["out"].as<std::string>();
  req.hosts = split_list(vm["hosts"].as<std::string>());
  if (vm["hosts"].defaulted() && std::filesystem::exists(req.dir + "/coordinator.pem")) {
    fmt::print("keeping {}/coordinator.pem (give --hosts to make another in a new directory)\n", req.dir);
    req.hosts.clear();
  }
  const int64_t n = vm["workers"].as<int64_t>();
  FEDRA_REQUIRE(n >= 0 && n <= 100000, "--workers must be between 0 and 100000, got {}", n);
  for (int64_t i = 0; i < n; ++i) req.workers.push_back(fmt::format("worker-{}", i));
  for (const auto& name : split_list(vm["names"].as<std::string>())) req.workers.push_back(name);
  req.days = vm["days"].as<int>();
  const auto written = transport::tcp::make_test_pki(req);
  for (const auto& f : written) fmt::print("wrote {}\n", f);
  if (written.empty()) fmt::print("nothing to write (no --hosts, --workers or --names)\n");
  return 0;
}

}  // namespace fedra::cli
