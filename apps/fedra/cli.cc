#include "apps/fedra/cli.h"
#include "apps/fedra/groups.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <sstream>
#include <thread>

#include <fmt/ranges.h>

#include "core/data/dataset.h"
#include "core/data/partition.h"
#include "core/runtime/placement.h"
#include "transport/tcp/tls.h"

namespace fedra::cli {

namespace {


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

// Every number in `vm` within its range (groups.cc number_range), or an Error naming the option,
// its value and the range.
void check_numbers(const std::string& command, const po::variables_map& vm) {
  for (const auto& [name, value] : vm) {
    const boost::any& v = value.value();
    double x = 0;
    bool integral = true;
    if (const auto* i = boost::any_cast<int>(&v)) x = *i;
    else if (const auto* l = boost::any_cast<int64_t>(&v)) x = static_cast<double>(*l);
    else if (const auto* d = boost::any_cast<double>(&v)) x = *d, integral = false;
    else continue;
    const NumberRange* r = number_range(command, name);
    FEDRA_REQUIRE(r != nullptr, "internal: option --{} is a number without a range (apps/fedra/groups.cc)", name);
    const bool above_lo = r->lo_open ? x > r->lo : x >= r->lo;
    const bool below_hi = r->hi_open ? x < r->hi : x <= r->hi;
    if (std::isfinite(x) && above_lo && below_hi) continue;
    const auto text = [integral](double n) {
      if (!integral || !std::isfinite(n)) return fmt::format("{}", n);
      return std::to_string(n >= 9.2e18 ? INT64_MAX : static_cast<int64_t>(n));
    };
    FEDRA_FAIL("--{} must be {} in {}{}, {}{}{}, got {}", name, integral ? "an integer" : "a finite number",
               r->lo_open ? "(" : "[", text(r->lo), text(r->hi), r->hi_open ? ")" : "]", r->unit, text(x));
  }
}

// A duration option (its range, checked by parse(), holds it in milliseconds).
std::chrono::milliseconds seconds_option(const po::variables_map& vm, const char* name) {
  return std::chrono::milliseconds(static_cast<int64_t>(vm[name].as<double>() * 1000));
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
  check_numbers(cmd, p.vm);
  // The numbers inside data specs are checked here too, not when a worker loads its data (after
  // a simulation started it, or after it connected).
  const auto check_spec = [&](const char* option, void (*check)(const std::string&)) {
    if (!p.vm.count(option)) return;
    const std::string spec = p.vm[option].as<std::string>();
    try {
      check(spec);
    } catch (const Error& e) {
      FEDRA_FAIL("--{} {}: {}", option, spec, e.what());
    }
  };
  if (command == Command::kWorker || command == Command::kSimulate) check_spec("partition", check_partition_spec);
  if (command != Command::kCerts) {
    check_spec("dataset", check_dataset_spec);
    if (p.vm.count("test-data") && p.vm["test-data"].as<std::string>() != "none") {
      check_spec("test-data", check_dataset_spec);
    }
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
  c.cohort.limits.max_frame_bytes = static_cast<uint64_t>(vm["max-frame-bytes"].as<int64_t>());
  c.cohort.limits.validate();
  c.cohort.token = vm["token"].as<std::string>();
  c.cohort.handshake_timeout = seconds_option(vm, "handshake-timeout");
  c.cohort.receive_budget_bytes = static_cast<uint64_t>(vm["receive-budget-mb"].as<int64_t>()) << 20;
  Job& job = c.cohort.job;
  job.strategy = vm["strategy"].as<std::string>();
  job.model = vm["model"].as<std::string>();
  job.loss = vm["loss"].as<std::string>();
  job.seed = static_cast<uint64_t>(vm["seed"].as<int64_t>());
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
  c.checkpoint_every = static_cast<uint32_t>(vm["checkpoint-every"].as<int64_t>());  // ranges: parse()
  c.checkpoint_keep = static_cast<uint32_t>(vm["checkpoint-keep"].as<int64_t>());
  c.checkpoint_seconds = vm["checkpoint-seconds"].as<double>();
  c.round_retries = static_cast<int>(vm["round-retries"].as<int64_t>());
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
  w.seed = static_cast<uint64_t>(vm["seed"].as<int64_t>());
  w.threads = vm["threads"].as<int>() < 0 ? 1 : vm["threads"].as<int>();
  w.connect_timeout = seconds_option(vm, "connect-timeout");
  w.limits.max_frame_bytes = static_cast<uint64_t>(vm["max-frame-bytes"].as<int64_t>());
  w.limits.validate();
  if (vm.count("dump-frames")) w.dump_frames_dir = vm["dump-frames"].as<std::string>();
  w.private_labels = vm["private-labels"].as<bool>();
  w.holdout = vm["holdout"].as<double>();
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
  for (int64_t i = 0; i < n; ++i) req.workers.push_back(fmt::format("worker-{}", i));
  for (const auto& name : split_list(vm["names"].as<std::string>())) req.workers.push_back(name);
  req.days = vm["days"].as<int>();
  const auto written = transport::tcp::make_test_pki(req);
  for (const auto& f : written) fmt::print("wrote {}\n", f);
  if (written.empty()) fmt::print("nothing to write (no --hosts, --workers or --names)\n");
  return 0;
}

}  // namespace fedra::cli
