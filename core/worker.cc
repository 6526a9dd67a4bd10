#include "core/worker.h"

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

#include "core/peer.h"
#include "core/process.h"
#include "core/partition.h"
#include "core/protocol.h"
#include "core/tensor_checks.h"
#include "core/training.h"
#include "transport/tcp/connection.h"
#include "transport/tcp/tls.h"

namespace fedra {

namespace tcp = transport::tcp;

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

// Before hanging up on a coordinator whose message this worker could not take (a malformed frame,
// an unusable welcome): an `error` without a request id saying why, as the protocol promises.
// Best effort: the connection may be gone already.
void tell_coordinator(tcp::BlockingChannel& channel, const std::string& name, const Error& e) {
  if (e.kind() != ErrorKind::kFailed) return;  // gone or timed out: nobody to tell, or nothing wrong with it
  transport::Envelope env;
  env.kind = protocol::kError;
  env.sender = name;
  env.error = transport::WireError{ErrorKind::kFailed, fmt::format("worker {} hangs up: {}", name, e.what())};
  try {
    channel.send(env);
  } catch (const Error&) {
  }
}

Message error_reply(const Message& request, ErrorKind kind, const std::string& what) {
  Message reply(protocol::kError, request.round);
  reply.step = request.step;
  reply.error = transport::WireError{kind, what};
  return reply;
}

// The worker's side of an exchange, over the blocking channel. Frames the main loop already read
// ahead (`ahead`) come first.
class ChannelLink : public WorkerLink {
 public:
  ChannelLink(tcp::BlockingChannel& channel, std::string name, std::deque<transport::Envelope>& ahead)
      : channel_(channel), name_(std::move(name)), ahead_(ahead) {}

  void begin(uint64_t request_id) { request_id_ = request_id; }

  void send(const Message& part) override {
    transport::Envelope env = to_envelope(part);
    env.sender = name_;
    env.request_id = request_id_;
    env.partial = true;
    channel_.send(env);
  }

  Message receive(std::chrono::milliseconds timeout) override {
    transport::Envelope env;
    if (!ahead_.empty()) {
      env = std::move(ahead_.front());
      ahead_.pop_front();
    } else {
      env = channel_.receive(timeout);
    }
    if (env.request_id == request_id_ && env.partial) {
      if (env.error) {
        FEDRA_FAIL("the coordinator cancelled the exchange: {}", env.error->message);
      }
      return from_envelope(std::move(env));
    }
    // Anything else (a shutdown, a new request) ends this exchange; the main loop handles it.
    const std::string kind = env.kind;
    stash_ = std::move(env);
    FEDRA_FAIL("the coordinator moved on ('{}') while request {} was in progress", kind, request_id_);
  }

  // A message that arrived during an exchange but belongs to the main loop.
  bool has_stash() const { return stash_.has_value(); }
  std::optional<transport::Envelope> take_stash() {
    auto out = std::move(stash_);
    stash_.reset();
    return out;
  }

 private:
  tcp::BlockingChannel& channel_;
  std::string name_;
  std::deque<transport::Envelope>& ahead_;
  uint64_t request_id_ = 0;
  std::optional<transport::Envelope> stash_;
};

}  // namespace

int run_worker(const WorkerConfig& config, const StrategyRegistry& registry) {
  const std::string name = config.name.empty() ? default_name() : config.name;
  WorkerContext ctx;
  ctx.name = name;
  ctx.threads = config.set_threads ? configure_threads(config.threads) : at::get_num_threads();
  Dataset data, held_out;
  std::unique_ptr<tcp::BlockingChannel> channel;
  std::unique_ptr<PeerHub> peers;
  try {
    data = config.data ? *config.data : std::move(load_private_data(config).front());
    if (config.holdout > 0) {
      const uint64_t seed = config.seed * 0x9E3779B97F4A7C15ULL + static_cast<uint64_t>(config.client_index) + 1;
      std::tie(data, held_out) = holdout_split(data, config.holdout, seed);
    }
    ctx.data = &data;
    ctx.eval_data = &held_out;
    spdlog::info("worker {}: {} training examples{} ({} partition, client {}/{})", name, data.size(),
                 held_out.size() > 0 ? fmt::format(", {} held out for federated evaluation", held_out.size()) : "",
                 config.partition, config.client_index, config.num_clients);
    channel = tcp::BlockingChannel::connect(
        tcp::parse_endpoint(config.coordinator), config.limits, config.connect_timeout,
        config.dump_frames_dir.empty() ? nullptr : std::make_shared<tcp::FrameDumper>(config.dump_frames_dir),
        config.tls);
    if (!config.tls || (!config.tls_cert.empty() && !config.tls_key.empty())) {
      PeerConfig pc;
      pc.listen = config.peer_listen;
      pc.advertise = config.advertise;
      pc.limits = config.limits;
      if (config.tls) {
        tcp::TlsConfig server{config.tls_cert, config.tls_key, config.tls_ca, ""};
        tcp::TlsConfig client{config.tls_cert, config.tls_key, config.tls_ca, ""};
        pc.tls_server = std::make_shared<tcp::TlsContext>(tcp::TlsRole::kServer, server);
        pc.tls_client = std::make_shared<tcp::TlsContext>(tcp::TlsRole::kClient, client);
      }
      peers = std::make_unique<PeerHub>(name, std::move(pc), channel->local_host());
      ctx.peers = peers.get();
    } else {
      spdlog::debug("worker {}: no peer port (TLS without --tls-cert/--tls-key)", name);
    }
    Message hello(protocol::kHello);
    hello.sender = name;
    if (peers) hello.options["peer_address"] = peers->address();
    if (!config.token.empty()) hello.options["token"] = config.token;
    hello.metrics["num_examples"] = static_cast<double>(data.size());
    if (!config.private_labels && !data.real_targets()) {
      const auto hist = label_histogram(data);
      hello.tensors.emplace_back("label_histogram", at::tensor(hist, at::kLong));
    }
    channel->send(to_envelope(hello));
  } catch (const Error& e) {
    spdlog::error("{}", e.what());
    return 1;
  }

  std::unique_ptr<WorkerStrategy> strategy;
  try {
    Message welcome = from_envelope(channel->receive(config.handshake_timeout));
    if (welcome.kind == protocol::kError) {
      spdlog::error("coordinator refused this worker: {}",
                    welcome.error ? welcome.error->message : std::string("(no reason given)"));
      return 2;
    }
    ctx.job = protocol::job_from_welcome(welcome);
    ctx.worker_id = std::stoull(welcome.option("worker_id"));
    if (peers) peers->set_key(welcome.option_or("peer_key", ""));
    strategy = registry.get(ctx.job.strategy).make_worker(ctx.job);
    spdlog::info("joined {} as worker #{}: strategy {}, model {}", channel->peer(), ctx.worker_id,
                 ctx.job.strategy, ctx.job.model);
  } catch (const Error& e) {
    tell_coordinator(*channel, name, e);
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

  try {
    // One example through the job's model before any request: a model that does not fit this
    // worker's data is one clear line here and at the coordinator, not a backtrace mid-round.
    // Once per process for a model and an example shape: virtual clients share the answer.
    static std::mutex mu;
    static std::set<std::string> fits;
    const std::string key = fmt::format("{} {} {} {} {}", ctx.job.model, ctx.job.seed, ctx.job.loss,
                                        ctx.data->size() > 0 ? describe_tensor(ctx.data->inputs[0]) : "",
                                        ctx.data->num_classes);
    std::lock_guard<std::mutex> lock(mu);
    if (fits.count(key) == 0) {
      check_model_fits(ctx.job.model, ctx.job.seed, *ctx.data, ctx.job.loss,
                       fmt::format("{}'s data ('{}')", name, config.dataset));
      fits.insert(key);
    }
  } catch (const Error& e) {
    tell_coordinator(*channel, name, e);
    spdlog::error("{}", e.what());
    return 2;
  }

  std::deque<transport::Envelope> ahead;  // frames read ahead of the one being handled
  ChannelLink link(*channel, name, ahead);
  for (;;) {
    transport::Envelope env;
    if (auto stashed = link.take_stash()) {
      env = std::move(*stashed);
    } else if (!ahead.empty()) {
      env = std::move(ahead.front());
      ahead.pop_front();
    } else {
      try {
        env = channel->receive();
      } catch (const Error& e) {
        tell_coordinator(*channel, name, e);
        spdlog::error("{}: {}", e.kind() == ErrorKind::kFailed ? "cannot read the coordinator's message"
                                                               : "connection to the coordinator lost",
                      e.what());
        return 1;
      }
    }
    const uint64_t request_id = env.request_id;
    if (env.partial) {  // a part of an exchange that already ended here (e.g. after an error)
      spdlog::debug("discarding a late part '{}' of request {}", env.kind, request_id);
      continue;
    }
    link.begin(request_id);
    Message request = from_envelope(std::move(env));
    if (request.kind == protocol::kShutdown) {
      spdlog::info("coordinator ended the job: {}", request.option_or("reason", "no reason given"));
      return 0;
    }
    if (request.kind == protocol::kError) {
      const std::string what = request.error ? request.error->message : std::string("(none given)");
      if (request_id != 0) {  // about this worker's answer to that request: refused, or too late
        spdlog::warn("the coordinator about request {} ({}): {}", request_id,
                     request.error ? error_kind_name(request.error->kind) : "failed", what);
        continue;
      }
      spdlog::error("coordinator reported an error: {}", what);
      return 1;
    }
    // Has the coordinator already given up on this request (its deadline passed while this
    // worker was stopped or busy)? Then its work would be thrown away: skip it.
    try {
      while (auto more = channel->poll_receive()) ahead.push_back(std::move(*more));
    } catch (const Error& e) {
      spdlog::error("connection to the coordinator lost: {}", e.what());
      return 1;
    }
    const auto expired = std::find_if(ahead.begin(), ahead.end(), [&](const transport::Envelope& e) {
      return e.kind == protocol::kError && e.request_id == request_id && !e.partial;
    });
    if (expired != ahead.end()) {
      spdlog::warn("skipping request {} ('{}', round {}): the coordinator gave up on it before this worker "
                   "got to it ({})",
                   request_id, request.kind, request.round, expired->error ? expired->error->message : "");
      ahead.erase(expired);
      continue;
    }
    Message reply;
    try {
      reply = strategy->handle(request, ctx, link);
    } catch (const Error& e) {
      spdlog::warn("request '{}' (round {}) failed: {}", request.kind, request.round, e.what());
      reply = error_reply(request, e.kind(), e.what());
    } catch (const std::exception& e) {  // LibTorch reports shape errors as c10::Error
      spdlog::warn("request '{}' (round {}) failed: {}", request.kind, request.round, e.what());
      reply = error_reply(request, ErrorKind::kFailed, e.what());
    }
    if (link.has_stash()) continue;  // the coordinator moved on: no one waits for this reply
    reply.sender = name;
    if (reply.round == 0) reply.round = request.round;
    transport::Envelope out = to_envelope(reply);
    out.request_id = request_id;
    try {
      channel->send(out);
    } catch (const Error& e) {
      // The coordinator may have ended the job while we worked: its shutdown is then waiting,
      // maybe behind other messages (a notice that this request expired).
      try {
        for (;;) {
          Message next;
          if (!ahead.empty()) {
            next = from_envelope(std::move(ahead.front()));
            ahead.pop_front();
          } else {
            next = from_envelope(channel->receive(std::chrono::milliseconds(0)));
          }
          if (next.kind == protocol::kShutdown) {
            spdlog::info("coordinator ended the job while this worker was busy: {}",
                         next.option_or("reason", "no reason given"));
            return 0;
          }
        }
      } catch (const Error&) {
      }
      spdlog::error("cannot reply to the coordinator: {}", e.what());
      return 1;
    }
  }
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
