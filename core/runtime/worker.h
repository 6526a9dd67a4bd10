// Worker: runs the worker half of whatever job the coordinator assigns.
//
// The worker loads its private training data (a dataset spec, optionally one client's part of a
// seeded partition), connects to the coordinator with retry and backoff, says hello (protocol
// version, name, token, example count and label histogram: never samples), receives the job, and
// then answers requests one at a time with the strategy's worker half until the coordinator says
// "shutdown". Everything runs on the calling thread; LibTorch gets `threads` intra-op threads.
//
// A strategy error while handling a request is sent back as an error reply (the coordinator
// records the failure and the worker stays available); a refused handshake, a lost connection or
// a malformed frame from the coordinator ends the worker with a message saying which.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "core/data/dataset.h"
#include "core/kit/registry.h"
#include "transport/codec.h"

namespace fedra {

namespace transport::tcp {
class TlsContext;
}
class LocalTrainer;

struct WorkerConfig {
  std::string coordinator = "127.0.0.1:7000";  // HOST:PORT
  std::string name;                            // default: hostname-pid
  std::string placement;  // how --client auto placed this worker, for the log; empty otherwise
  std::string token;
  std::string dataset = "fmnist";
  std::string partition = "iid";
  int64_t client_index = 0;  // this worker's part of the partition...
  int64_t num_clients = 1;   // ...of this many; 1: the whole training split
  uint64_t seed = 1;         // partition seed: the same in every worker of a simulation
  // Fraction of this worker's part held out of training for federated evaluation
  // (WorkerContext::eval_data), drawn with a seed of `seed` and the client index.
  double holdout = 0;
  int threads = 1;           // 0: all cores
  std::chrono::milliseconds connect_timeout{60000};
  std::chrono::milliseconds handshake_timeout{30000};
  transport::Limits limits;
  std::string dump_frames_dir;  // if set, every frame is written there (docs/protocol.md)
  // TLS in the client role (transport/tcp/tls.h); null: plain TCP. Shared by virtual clients.
  std::shared_ptr<transport::tcp::TlsContext> tls;
  // Worker-to-worker links (core/net/peer.h): where this worker listens for its peers (empty: the
  // local address of its coordinator link, any port) and the HOST[:PORT] it tells them
  // (--peer-listen, --advertise). With TLS, peer links use these files: the worker's
  // certificate and key (it is the TLS server for the peer that connects to it) and the CA.
  std::string peer_listen;
  std::string advertise;
  std::string tls_cert, tls_key, tls_ca;
  // Leave the label histogram out of the hello, so nothing about the labels leaves the process
  // (split learning's U-shaped variant keeps labels private).
  bool private_labels = false;
  // Set by run_virtual_clients: this client's training data, already loaded and partitioned
  // (`dataset` and `partition` are then not read), and LibTorch's threads left as the host set them.
  std::shared_ptr<const Dataset> data;
  bool set_threads = true;
  // The user's own local training (a Python worker); null: Fedra's loop. With a trainer the worker
  // may hold no dataset of Fedra's (`dataset` empty): it then says `num_examples` in its hello (the
  // weight of its updates, which secure aggregation needs before they arrive) and no label histogram.
  LocalTrainer* trainer = nullptr;
  int64_t num_examples = 0;
};

// `text` with every {client} replaced by `index` (a per-site data file, certificate, ...).
std::string with_client_index(std::string text, int64_t index);

// Returns the process exit code: 0 after a shutdown from the coordinator, 1 on an error, 2 if
// the coordinator refused the worker.
int run_worker(const WorkerConfig& config, const StrategyRegistry& registry);

// Hosts `count` virtual clients in this one process: clients client_index ..
// client_index + count - 1 of num_clients, each with its own connection, its own name
// (NAME-i, or worker-i) and its own part of the partition, exactly as that many separate
// `fedra worker --client i/N` processes would have. The dataset is loaded and partitioned once;
// every client runs run_worker on a thread of its own and sleeps in its socket until the
// coordinator asks something of it, so a process can hold hundreds of clients of which a few
// train at a time (FedAvg's `fraction`). LibTorch gets `threads` intra-op threads, shared.
// Returns 0 if every client ended with 0, otherwise the first other exit code.
int run_virtual_clients(const WorkerConfig& config, int64_t count, const StrategyRegistry& registry);

}  // namespace fedra
