#include "apps/fedra/simulate.h"

#include <atomic>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <thread>

#include <spdlog/spdlog.h>

#include "apps/fedra/cli.h"
#include "core/system/stop.h"
#include "core/system/subprocess.h"
#include "transport/tcp/tls.h"

namespace fedra::cli {

namespace {

std::string default_out_dir(const std::string& strategy) {
  const std::time_t now = std::time(nullptr);
  char stamp[32];
  std::strftime(stamp, sizeof(stamp), "%Y%m%d-%H%M%S", std::localtime(&now));
  return fmt::format("runs/{}-{}", strategy, stamp);
}

// The last non-empty line of a worker's log, to say why it exited.
std::string last_log_line(const std::string& path) {
  std::ifstream in(path);
  std::string line, last;
  while (std::getline(in, line)) {
    if (!line.empty()) last = line;
  }
  return last.empty() ? fmt::format("(its log {} is empty)", path) : fmt::format("'{}' (log: {})", last, path);
}

}  // namespace

namespace {

// A throwaway CA and certificates for the run (a resumed run gets new ones too); the coordinator's
// TLS context.
void make_run_certificates(CoordinatorConfig& config, const std::vector<std::string>& names, const std::string& dir) {
  std::filesystem::remove_all(dir);
  transport::tcp::PkiRequest pki;
  pki.dir = dir;
  pki.hosts = {"127.0.0.1"};
  pki.workers = names;
  pki.days = 2;
  transport::tcp::make_test_pki(pki);
  transport::tcp::TlsConfig server;
  server.cert_file = dir + "/coordinator.pem";
  server.key_file = dir + "/coordinator.key";
  server.ca_file = dir + "/ca.pem";
  config.cohort.tls = std::make_shared<transport::tcp::TlsContext>(transport::tcp::TlsRole::kServer, server);
}

// Where the worker processes go and what each runs: process i hosts clients [first(i), first(i + 1)).
struct Fleet {
  int64_t workers = 0, clients = 0;
  int threads = 1;
  std::vector<std::string> names;  // worker-i, or workers-A-B for a process of several clients
  int64_t first(int64_t i) const { return i * clients / workers; }
  int64_t count(int64_t i) const { return first(i + 1) - first(i); }
};

std::vector<std::string> worker_argv(const po::variables_map& vm, const CoordinatorConfig& config, const Fleet& f,
                                     int64_t i, const std::string& address, const std::string& log_level,
                                     const std::string& cert_dir) {
  const std::string& name = f.names[static_cast<size_t>(i)];
  std::vector<std::string> argv = {
      self_executable(), "worker",
      "--connect", address,
      "--name", f.count(i) == 1 ? name : "worker",
      "--virtual-clients", std::to_string(f.count(i)),
      "--dataset", vm["dataset"].as<std::string>(),
      "--partition", vm["partition"].as<std::string>(),
      "--client", fmt::format("{}/{}", f.first(i), f.clients),
      "--seed", std::to_string(vm["seed"].as<int64_t>()),
      "--threads", std::to_string(f.threads),
      "--max-frame-bytes", std::to_string(config.cohort.limits.max_frame_bytes),
      "--log-level", log_level,
      "--connect-timeout", "30"};
  if (vm["private-labels"].as<bool>()) argv.push_back("--private-labels");
  if (vm["holdout"].as<double>() > 0) {
    argv.push_back("--holdout");
    argv.push_back(fmt::format("{:.17g}", vm["holdout"].as<double>()));
  }
  if (vm["tls"].as<bool>()) {
    for (const auto& [option, file] : {std::pair<std::string, std::string>{"--tls-ca", "ca.pem"},
                                       {"--tls-cert", name + ".pem"},
                                       {"--tls-key", name + ".key"}}) {
      argv.push_back(option);
      argv.push_back(cert_dir + "/" + file);
    }
  }
  if (vm.count("plugin")) {
    for (const auto& p : vm["plugin"].as<std::vector<std::string>>()) {
      argv.push_back("--plugin");
      argv.push_back(std::filesystem::absolute(p).string());
    }
  }
  if (!config.cohort.token.empty()) {
    argv.push_back("--token");
    argv.push_back(config.cohort.token);
  }
  return argv;
}

// Runs the job. Meanwhile a watcher reaps workers that exit; if all have, nobody is left to
// train, so the job fails at once with their reasons instead of waiting out --wait-timeout.
int run_watched(Coordinator& coordinator, const std::vector<ChildProcess>& children, const Fleet& f,
                StopSignal& stop, std::vector<std::optional<int>>& exited) {
  std::mutex exited_mu;
  std::atomic<bool> job_over{false};
  std::thread watcher([&] {
    while (!job_over.load()) {
      size_t gone = 0;
      {
        std::lock_guard<std::mutex> lock(exited_mu);
        for (size_t i = 0; i < children.size(); ++i) {
          if (!exited[i]) exited[i] = wait_for(children[i], std::chrono::milliseconds(0));
          gone += exited[i] ? 1 : 0;
        }
      }
      if (gone == children.size()) {
        stop.fail(fmt::format("all {} worker processes exited before the job ended; {} exited with code {}: {}",
                              children.size(), f.names[0], *exited[0], last_log_line(children[0].log_path)));
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  });
  const int code = coordinator.run();
  job_over.store(true);
  watcher.join();
  return code;
}

// Workers exit on the coordinator's shutdown message; give them a moment, then make sure.
void reap(const std::vector<ChildProcess>& children, std::vector<std::optional<int>>& exited, int code) {
  int failed_workers = 0;
  for (size_t i = 0; i < children.size(); ++i) {
    auto status = exited[i] ? exited[i] : wait_for(children[i], std::chrono::seconds(10));
    if (!status) {
      kill_child(children[i]);
      status = 137;
    }
    if (*status != 0) {
      ++failed_workers;
      spdlog::warn("worker process {} exited with code {}; see {}", i, *status, children[i].log_path);
    }
  }
  if (code == 0 && failed_workers > 0) {
    spdlog::warn("{} worker(s) ended abnormally; the job completed without them", failed_workers);
  }
}

}  // namespace

int run_simulation(const po::variables_map& vm, const StrategyRegistry& registry,
                   const std::string& log_level, std::shared_ptr<StopSignal> stop) {
  Fleet f;
  f.workers = vm["workers"].as<int64_t>();  // ranges: parse()
  f.clients = vm["clients"].as<int64_t>() > 0 ? vm["clients"].as<int64_t>() : f.workers;
  FEDRA_REQUIRE(f.clients >= f.workers, "--clients ({}) must be at least --workers ({}): each process hosts one "
                "client or more", f.clients, f.workers);
  CoordinatorConfig config = coordinator_config(vm, registry);
  if (!stop) stop = std::make_shared<StopSignal>();
  config.cohort.stop = stop;
  config.cohort.listen = "127.0.0.1:0";
  if (!vm.count("min-workers")) config.min_workers = static_cast<size_t>(f.clients);
  if (config.out_dir.empty()) config.out_dir = default_out_dir(config.cohort.job.strategy);
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  f.threads = vm["worker-threads"].as<int>();
  if (f.threads <= 0) f.threads = std::max(1, cores / static_cast<int>(f.workers));
  config.resolved_config["worker-threads"] = std::to_string(f.threads);
  config.resolved_config["out"] = config.out_dir;
  for (int64_t i = 0; i < f.workers; ++i) {
    f.names.push_back(f.count(i) == 1 ? fmt::format("worker-{}", f.first(i))
                                      : fmt::format("workers-{}-{}", f.first(i), f.first(i) + f.count(i) - 1));
  }
  const std::string cert_dir = config.out_dir + "/certs";
  if (vm["tls"].as<bool>()) make_run_certificates(config, f.names, cert_dir);

  // The coordinator binds before any worker starts, so workers connect on the first try.
  Coordinator coordinator(config, registry);
  const std::string log_dir = config.out_dir + "/logs";
  std::filesystem::create_directories(log_dir);
  if (f.clients > f.workers) {
    spdlog::info("starting {} worker processes hosting {} clients ({} LibTorch thread(s) each); their logs are "
                 "in {}/", f.workers, f.clients, f.threads, log_dir);
  } else {
    spdlog::info("starting {} workers ({} LibTorch thread(s) each); their logs are in {}/", f.workers, f.threads,
                 log_dir);
  }
  std::vector<ChildProcess> children;
  for (int64_t i = 0; i < f.workers; ++i) {
    children.push_back(spawn(worker_argv(vm, config, f, i, coordinator.local_address(), log_level, cert_dir),
                             fmt::format("{}/{}.log", log_dir, f.names[static_cast<size_t>(i)]),
                             {{"OMP_NUM_THREADS", std::to_string(f.threads)}}));
  }
  std::vector<std::optional<int>> exited(children.size());
  const int code = run_watched(coordinator, children, f, *stop, exited);
  reap(children, exited, code);
  return code;
}

}  // namespace fedra::cli
