#include "core/runtime/worker.h"

#include <unistd.h>

#include <algorithm>
#include <deque>
#include <mutex>
#include <set>
#include <thread>
#include <tuple>
#include <vector>

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include "core/data/partition.h"
#include "core/data/tensor_checks.h"
#include "core/net/protocol.h"
#include "core/net/worker_links.h"
#include "core/runtime/serve.h"
#include "core/system/process.h"
#include "core/training/training.h"

namespace fedra {

namespace {

std::string default_name() {
  char host[256] = {0};
  ::gethostname(host, sizeof(host) - 1);
  return fmt::format("{}-{}", host, ::getpid());
}

}  // namespace

std::string with_client_index(std::string text, int64_t index) {
  for (size_t at; (at = text.find("{client}")) != std::string::npos;) text.replace(at, 8, std::to_string(index));
  return text;
}

namespace {

// The training data of clients client_index .. client_index + count - 1: the dataset loaded and
// partitioned once, whatever the count.
// With a {client} placeholder in the spec (one file per site), client i reads its own file, whole.
std::vector<Dataset> load_private_data(const WorkerConfig& c, int64_t count = 1) {
  if (c.dataset.find("{client}") != std::string::npos) {
    std::vector<Dataset> parts;
    for (int64_t i = 0; i < count; ++i) {
      parts.push_back(load_dataset(with_client_index(c.dataset, c.client_index + i), Splits::kTrain).train);
    }
    return parts;
  }
  DatasetSplits splits = load_dataset(c.dataset, Splits::kTrain);
  if (c.num_clients <= 1) return {std::move(splits.train)};
  FEDRA_REQUIRE(c.client_index >= 0 && c.client_index < c.num_clients,
                "--client {}/{}: the index must be in 0..{}", c.client_index, c.num_clients,
                c.num_clients - 1);
  const bool real = splits.train.real_targets();
  FEDRA_REQUIRE(!real || c.partition == "iid", "--partition {} splits by class label, and '{}' has real-valued "
                "targets (regression or multi-label); use --partition iid, or one file per site with {{client}}",
                c.partition, c.dataset);
  Partition p = partition_dataset(real ? at::zeros({splits.train.size()}, at::kLong) : splits.train.targets,
                                  real ? 1 : splits.train.num_classes, c.partition, c.num_clients, c.seed);
  std::vector<Dataset> parts;
  for (int64_t i = 0; i < count; ++i) {
    parts.push_back(subset(splits.train, p.clients[static_cast<size_t>(c.client_index + i)]));
  }
  return parts;
}

WorkerLinkConfig link_config(const WorkerConfig& c) {
  WorkerLinkConfig l;
  l.coordinator = c.coordinator;
  l.limits = c.limits;
  l.connect_timeout = c.connect_timeout;
  l.dump_frames_dir = c.dump_frames_dir;
  l.tls = c.tls;
  l.peer_listen = c.peer_listen;
  l.advertise = c.advertise;
  l.tls_cert = c.tls_cert;
  l.tls_key = c.tls_key;
  l.tls_ca = c.tls_ca;
  return l;
}

// This worker's training data and the part it holds out for federated evaluation.
void load_data(const WorkerConfig& config, const std::string& name, Dataset& data, Dataset& held_out) {
  if (!config.data && config.dataset.empty()) {
    FEDRA_REQUIRE(config.trainer != nullptr, "worker {}: no dataset given", name);
    FEDRA_REQUIRE(config.num_examples > 0, "worker {}: with its own data (no Fedra dataset), it must say how many "
                  "examples it trains on (num_examples > 0), the weight of its updates", name);
    spdlog::info("worker {}: its own data and training loop, {} examples", name, config.num_examples);
    return;
  }
  data = config.data ? *config.data : std::move(load_private_data(config).front());
  if (config.holdout > 0) {
    const uint64_t seed = config.seed * 0x9E3779B97F4A7C15ULL + static_cast<uint64_t>(config.client_index) + 1;
    std::tie(data, held_out) = holdout_split(data, config.holdout, seed);
  }
  spdlog::info("worker {}: {} training examples{} ({} partition, client {}/{})", name, data.size(),
               held_out.size() > 0 ? fmt::format(", {} held out for federated evaluation", held_out.size()) : "",
               config.partition, config.client_index, config.num_clients);
}

// The handshake's first message: who this worker is and what data it holds, never samples.
Message hello_of(const WorkerConfig& config, const std::string& name, const Dataset& data, const PeerHub* peers) {
  Message hello(protocol::kHello);
  hello.sender = name;
  if (peers != nullptr) hello.options["peer_address"] = peers->address();
  if (!config.token.empty()) hello.options["token"] = config.token;
  hello.metrics["num_examples"] = static_cast<double>(data.size() > 0 ? data.size() : config.num_examples);
  if (!config.private_labels && data.size() > 0 && !data.real_targets()) {
    hello.tensors.emplace_back("label_histogram", at::tensor(label_histogram(data), at::kLong));
  }
  return hello;
}

// The coordinator's answer to the hello: the job, and the strategy's worker half for it. Returns
// the exit code to end with (2: refused, 1: the handshake failed), or 0 to go on.
int join(const WorkerConfig& config, transport::Channel& channel, WorkerContext& ctx, PeerHub* peers,
         const StrategyRegistry& registry, std::unique_ptr<WorkerStrategy>& strategy) {
  try {
    Message welcome = from_envelope(channel.receive(config.handshake_timeout));
    if (welcome.kind == protocol::kError) {
      spdlog::error("coordinator refused this worker: {}",
                    welcome.error ? welcome.error->message : std::string("(no reason given)"));
      return 2;
    }
    ctx.job = protocol::job_from_welcome(welcome);
    ctx.worker_id = std::stoull(welcome.option("worker_id"));
    if (peers != nullptr) peers->set_key(welcome.option_or("peer_key", ""));
    strategy = registry.get(ctx.job.strategy).make_worker(ctx.job);
    spdlog::info("joined {} as worker #{}: strategy {}, model {}", channel.peer(), ctx.worker_id,
                 ctx.job.strategy, ctx.job.model);
    return 0;
  } catch (const Error& e) {
    tell_coordinator(channel, ctx.name, e);
    const std::string what = e.what();
    if (what.rfind("TLS handshake", 0) == 0) {
      spdlog::error("{}", what);
    } else {
      spdlog::error("handshake with {} failed: {}{}", config.coordinator, what,
                    !config.tls && e.kind() == ErrorKind::kDisconnected
                        ? " (before welcoming this worker: if the coordinator requires TLS, give --tls-ca)"
                        : "");
    }
    return 1;
  }
}

// One example through the job's model before any request: a model that does not fit this
// worker's data is one clear line here and at the coordinator, not a backtrace mid-round.
// Once per process for a model and an example shape: virtual clients share the answer.
void check_fits(const WorkerContext& ctx, const std::string& dataset) {
  static std::mutex mu;
  static std::set<std::string> fits;
  const std::string key = fmt::format("{} {} {} {} {}", ctx.job.model, ctx.job.seed, ctx.job.loss,
                                      ctx.data->size() > 0 ? describe_tensor(ctx.data->inputs[0]) : "",
                                      ctx.data->num_classes);
  std::lock_guard<std::mutex> lock(mu);
  if (fits.count(key) == 0) {
    check_model_fits(ctx.job.model, ctx.job.seed, *ctx.data, ctx.job.loss,
                     fmt::format("{}'s data ('{}')", ctx.name, dataset));
    fits.insert(key);
  }
}

}  // namespace

int run_worker(const WorkerConfig& config, const StrategyRegistry& registry) {
  WorkerContext ctx;
  ctx.name = config.name.empty() ? default_name() : config.name;
  ctx.threads = config.set_threads ? configure_threads(config.threads) : at::get_num_threads();
  Dataset data, held_out;
  std::unique_ptr<transport::Channel> channel;
  std::unique_ptr<PeerHub> peers;
  try {
    load_data(config, ctx.name, data, held_out);
    ctx.data = &data;
    ctx.eval_data = &held_out;
    ctx.trainer = config.trainer;
    const WorkerLinkConfig links = link_config(config);
    channel = connect_to_coordinator(links);
    peers = open_peer_port(links, ctx.name, *channel);
    ctx.peers = peers.get();
    channel->send(to_envelope(hello_of(config, ctx.name, data, peers.get())));
  } catch (const Error& e) {
    spdlog::error("{}", e.what());
    return 1;
  }
  std::unique_ptr<WorkerStrategy> strategy;
  if (const int code = join(config, *channel, ctx, peers.get(), registry, strategy); code != 0) return code;
  try {
    if (data.size() > 0) check_fits(ctx, config.dataset);
  } catch (const Error& e) {
    tell_coordinator(*channel, ctx.name, e);
    spdlog::error("{}", e.what());
    return 2;
  }
  return serve(*channel, *strategy, ctx);
}

int run_virtual_clients(const WorkerConfig& config, int64_t count, const StrategyRegistry& registry) {
  FEDRA_REQUIRE(count >= 1, "--virtual-clients must be >= 1, got {}", count);
  FEDRA_REQUIRE(config.client_index >= 0 && config.client_index + count <= config.num_clients,
                "--client {}/{} with --virtual-clients {}: clients {}..{} do not exist (0..{})", config.client_index,
                config.num_clients, count, config.client_index, config.client_index + count - 1,
                config.num_clients - 1);
  configure_threads(config.threads);
  std::vector<std::shared_ptr<const Dataset>> parts;
  try {
    for (Dataset& d : load_private_data(config, count)) parts.push_back(std::make_shared<const Dataset>(std::move(d)));
  } catch (const Error& e) {
    spdlog::error("{}", e.what());
    return 1;
  }
  const std::string base = config.name.empty() ? "worker" : config.name;
  spdlog::info("hosting {} virtual clients ({}-{} .. {}-{} of {}), {} training examples in all", count, base,
               config.client_index, base, config.client_index + count - 1, config.num_clients,
               [&] {
                 int64_t n = 0;
                 for (const auto& d : parts) n += d->size();
                 return n;
               }());
  std::vector<int> codes(static_cast<size_t>(count), 0);
  std::vector<std::thread> threads;
  threads.reserve(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) {
    WorkerConfig c = config;
    c.client_index = config.client_index + i;
    c.name = fmt::format("{}-{}", base, c.client_index);
    c.data = parts[static_cast<size_t>(i)];
    c.set_threads = false;
    threads.emplace_back([c = std::move(c), &codes, &registry, i] {
      try {
        codes[static_cast<size_t>(i)] = run_worker(c, registry);
      } catch (const std::exception& e) {
        spdlog::error("virtual client {}: {}", c.name, e.what());
        codes[static_cast<size_t>(i)] = 1;
      }
    });
  }
  for (auto& t : threads) t.join();
  int64_t failed = 0;
  int first = 0;
  for (int code : codes) {
    if (code != 0) {
      ++failed;
      if (first == 0) first = code;
    }
  }
  if (failed > 0) spdlog::warn("{} of {} virtual clients ended abnormally", failed, count);
  return first;
}

}  // namespace fedra
