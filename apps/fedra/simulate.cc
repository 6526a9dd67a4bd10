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

int run_simulation(const po::variables_map& vm, const StrategyRegistry& registry,
                   const std::string& log_level, std::shared_ptr<StopSignal> stop) {
  const int64_t workers = vm["workers"].as<int64_t>();
  FEDRA_REQUIRE(workers >= 1 && workers <= 1000, "--workers must be between 1 and 1000, got {}", workers);
  const int64_t clients = vm["clients"].as<int64_t>() > 0 ? vm["clients"].as<int64_t>() : workers;
  FEDRA_REQUIRE(clients >= workers && clients <= 100000,
                "--clients must be between --workers ({}) and 100000, got {}", workers, clients);
  CoordinatorConfig config = coordinator_config(vm, registry);
  if (!stop) stop = std::make_shared<StopSignal>();
  config.cohort.stop = stop;
  config.cohort.listen = "127.0.0.1:0";
  if (!vm.count("min-workers")) config.min_workers = static_cast<size_t>(clients);
  if (config.out_dir.empty()) config.out_dir = default_out_dir(config.cohort.job.strategy);
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  int worker_threads = vm["worker-threads"].as<int>();
  if (worker_threads <= 0) worker_threads = std::max(1, cores / static_cast<int>(workers));
  config.resolved_config["worker-threads"] = std::to_string(worker_threads);
  config.resolved_config["out"] = config.out_dir;

  // Process i hosts clients [first(i), first(i + 1)); with one client each it is worker-i.
  auto first = [&](int64_t i) { return i * clients / workers; };
  std::vector<std::string> names;
  for (int64_t i = 0; i < workers; ++i) {
    const int64_t count = first(i + 1) - first(i);
    names.push_back(count == 1 ? fmt::format("worker-{}", first(i))
                               : fmt::format("workers-{}-{}", first(i), first(i) + count - 1));
  }
  const bool tls = vm["tls"].as<bool>();
  const std::string cert_dir = config.out_dir + "/certs";
  if (tls) {
    // Throwaway: a new CA per run (a resumed run gets new certificates too).
    std::filesystem::remove_all(cert_dir);
    transport::tcp::PkiRequest pki;
    pki.dir = cert_dir;
    pki.hosts = {"127.0.0.1"};
    pki.workers = names;
    pki.days = 2;
    transport::tcp::make_test_pki(pki);
    transport::tcp::TlsConfig server;
    server.cert_file = cert_dir + "/coordinator.pem";
    server.key_file = cert_dir + "/coordinator.key";
    server.ca_file = cert_dir + "/ca.pem";
    config.cohort.tls = std::make_shared<transport::tcp::TlsContext>(transport::tcp::TlsRole::kServer, server);
  }

  // The coordinator binds before any worker starts, so workers connect on the first try.
  Coordinator coordinator(config, registry);
  const std::string address = coordinator.local_address();
  const std::string log_dir = config.out_dir + "/logs";
  std::filesystem::create_directories(log_dir);
  if (clients > workers) {
    spdlog::info("starting {} worker processes hosting {} clients ({} LibTorch thread(s) each); their logs are "
                 "in {}/", workers, clients, worker_threads, log_dir);
  } else {
    spdlog::info("starting {} workers ({} LibTorch thread(s) each); their logs are in {}/", workers,
                 worker_threads, log_dir);
  }

  const std::string self = self_executable();
  std::vector<ChildProcess> children;
  for (int64_t i = 0; i < workers; ++i) {
    const int64_t count = first(i + 1) - first(i);
    const std::string& name = names[static_cast<size_t>(i)];
    std::vector<std::string> argv = {
        self, "worker",
        "--connect", address,
        "--name", count == 1 ? name : "worker",
        "--virtual-clients", std::to_string(count),
        "--dataset", vm["dataset"].as<std::string>(),
        "--partition", vm["partition"].as<std::string>(),
        "--client", fmt::format("{}/{}", first(i), clients),
        "--seed", std::to_string(vm["seed"].as<uint64_t>()),
        "--threads", std::to_string(worker_threads),
        "--max-frame-bytes", std::to_string(config.cohort.limits.max_frame_bytes),
        "--log-level", log_level,
        "--connect-timeout", "30"};
    if (vm["private-labels"].as<bool>()) argv.push_back("--private-labels");
    if (vm["holdout"].as<double>() > 0) {
      argv.push_back("--holdout");
      argv.push_back(fmt::format("{:.17g}", vm["holdout"].as<double>()));
    }
    if (tls) {
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
    children.push_back(spawn(argv, fmt::format("{}/{}.log", log_dir, name),
                             {{"OMP_NUM_THREADS", std::to_string(worker_threads)}}));
  }

  // While the job runs, a watcher reaps workers that exit; if all have, nobody is left to train,
  // so the job fails at once with their reasons instead of waiting out --wait-timeout.
  std::vector<std::optional<int>> exited(children.size());
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
        stop->fail(fmt::format("all {} worker processes exited before the job ended; {} exited with code {}: {}",
                               children.size(), names[0], *exited[0], last_log_line(children[0].log_path)));
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  });
  const int code = coordinator.run();
  job_over.store(true);
  watcher.join();

  // Workers exit on the coordinator's shutdown message; give them a moment, then make sure.
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
  return code;
}

}  // namespace fedra::cli
