#include "apps/fedra/groups.h"

#include <map>

#include <fmt/ranges.h>

namespace fedra::cli {

namespace {

constexpr double kMaxFloat = 3.4028234663852886e38;  // float32's largest: what a tensor scalar can hold
constexpr double kInt64Max = 9223372036854775807.0;

}  // namespace

const NumberRange* number_range(const std::string& command, const std::string& name) {
  static const std::map<std::string, NumberRange> ranges = {
      {"seed", {0, kInt64Max}},
      {"max-frame-bytes", {4096, 1099511627776.0, false, false, " bytes"}},  // 4 KiB .. 1 TiB
      {"threads", {-1, 4096}},
      {"days", {1, 36500, false, false, " days"}},
      {"certs/workers", {0, 100000}},
      {"min-workers", {1, 1000000}},
      {"wait-timeout", {0, kMaxSeconds, true, false, " seconds"}},
      {"handshake-timeout", {0, kMaxSeconds, true, false, " seconds"}},
      {"receive-budget-mb", {1, 1048576, false, false, " MiB"}},
      {"checkpoint-every", {0, 4294967295.0}},
      {"checkpoint-seconds", {0, kMaxSeconds, false, false, " seconds"}},
      {"checkpoint-keep", {1, 4294967295.0}},
      {"round-retries", {0, 1000}},
      {"rank-offset", {0, 1000000}},
      {"virtual-clients", {1, 100000}},
      {"connect-timeout", {0, kMaxSeconds, true, false, " seconds"}},
      {"holdout", {0, 1, false, true}},
      {"workers", {1, 1000}},
      {"clients", {0, 100000}},
      {"worker-threads", {0, 4096}},
      {"epochs", {1, 1000000}},
      {"batch-size", {1, 1000000000}},
      {"lr", {0, kMaxFloat, true}},
      {"momentum", {0, 1, false, true}},
      {"weight-decay", {0, kMaxFloat}},
      {"max-steps", {0, kInt64Max}},
  };
  auto it = ranges.find(command + "/" + name);
  if (it == ranges.end()) it = ranges.find(name);
  return it == ranges.end() ? nullptr : &it->second;
}

Groups::Groups(const StrategyRegistry& strategy_registry) : registry(strategy_registry) {
  define_general();
  define_network();
  define_coordinator();
  define_worker();
  define_simulate_and_train();
  for (const auto& s : registry.list()) add_strategy(strategies, s, true);
}

void Groups::define_general() {
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
      ("seed", po::value<int64_t>()->default_value(1),
       "seed for model initialisation, worker sampling, local shuffling and the data partition");
}

void Groups::define_network() {
  network.add_options()
      ("token", po::value<std::string>()->default_value(""),
       "shared secret workers must present; empty: none")
      ("max-frame-bytes", po::value<int64_t>()->default_value(int64_t{2} << 30),
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
}

void Groups::define_coordinator() {
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
      ("receive-budget-mb", po::value<int64_t>()->default_value(512),
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
}

void Groups::define_worker() {
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
}

void Groups::define_simulate_and_train() {
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
}

}  // namespace fedra::cli
