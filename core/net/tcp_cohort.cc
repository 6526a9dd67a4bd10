#include "core/net/tcp_cohort.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <optional>
#include <random>

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <asio/posix/stream_descriptor.hpp>
#include <openssl/rand.h>

#include "core/net/peer.h"
#include "core/net/protocol.h"
#include "core/system/stop.h"
#include "transport/tcp/connection.h"
#include "transport/tcp/tls.h"

namespace fedra {

namespace tcp = transport::tcp;

namespace {

// 128 random bits, hex.
std::string random_key() {
  unsigned char bytes[16];
  FEDRA_REQUIRE(RAND_bytes(bytes, sizeof(bytes)) == 1, "no randomness for the job's peer key");
  std::string out;
  for (unsigned char b : bytes) out += fmt::format("{:02x}", b);
  return out;
}

std::string seconds(Clock::duration d) {
  return fmt::format("{:.1f} s", std::chrono::duration<double>(d).count());
}

}  // namespace

struct TcpCohort::Impl {
  struct Member {
    WorkerInfo info;
    std::shared_ptr<tcp::Connection> conn;
    bool ready = false;     // past the handshake
    bool rejected = false;  // refused or dropped: its connection is closing
    bool active() const { return ready && !rejected; }  // listed, sampled, asked
    std::optional<asio::steady_timer> handshake_timer;
    // At most one request is outstanding per worker.
    uint64_t pending_id = 0;
    // Shared so that a handler that ends the request (clearing it) is not destroyed mid-call.
    std::shared_ptr<std::function<void(Message&&)>> on_part;
    std::function<void(Message&&)> on_reply;
    std::function<void(Failure)> on_fail;
  };

  CohortConfig config;
  asio::io_context io;
  std::shared_ptr<tcp::ReceiveBudget> budget;
  std::shared_ptr<tcp::FrameDumper> dumper;
  std::unique_ptr<tcp::Listener> listener;
  std::optional<asio::posix::stream_descriptor> stop_watch;  // the app's StopSignal, to wake for
  std::map<WorkerId, std::shared_ptr<Member>> members;
  WorkerId next_id = 1;
  uint64_t next_request = 1;
  uint64_t closed_bytes_up = 0;
  uint64_t closed_bytes_down = 0;
  std::map<std::string, std::pair<uint64_t, uint64_t>> closed_by_name;  // ready workers' (up, down)
  bool stop = false;
  // The job's secret for worker-to-worker links: every worker gets it in its welcome and shows it
  // to the peers it connects to (core/net/peer.h).
  std::string peer_key = random_key();

  explicit Impl(CohortConfig c) : config(std::move(c)) {
    config.limits.validate();
    budget = std::make_shared<tcp::ReceiveBudget>(config.receive_budget_bytes);
    if (!config.dump_frames_dir.empty()) dumper = std::make_shared<tcp::FrameDumper>(config.dump_frames_dir);
    const tcp::Endpoint endpoint = tcp::parse_endpoint(config.listen);
    FEDRA_REQUIRE(config.tls || config.insecure || tcp::is_loopback_host(endpoint.host),
                  "refusing to listen on {} without TLS: anyone who can reach it could join, and "
                  "the model and every update would cross the network in clear text. Give "
                  "--tls-cert and --tls-key (and --tls-ca for mutual TLS; `fedra certs` makes a "
                  "test set), or --insecure on a network you trust",
                  config.listen);
    if (config.tls) {
      spdlog::info("{}", config.tls->describe());
    } else if (!tcp::is_loopback_host(endpoint.host)) {
      spdlog::warn("listening on {} without TLS (--insecure): traffic is readable and any host "
                   "that can reach the port may join{}", config.listen,
                   config.token.empty() ? " (and there is no --token)" : "");
    }
    listener = std::make_unique<tcp::Listener>(io, endpoint,
                                               [this](asio::ip::tcp::socket s) { accept(std::move(s)); });
    if (config.stop) {
      const int fd = ::dup(config.stop->fd());
      FEDRA_REQUIRE(fd >= 0, "cannot watch the stop signal");
      stop_watch.emplace(io, fd);
      stop_watch->async_wait(asio::posix::descriptor_base::wait_read, [this](const asio::error_code& ec) {
        if (ec) return;
        stop = true;
        spdlog::warn("received signal {}: stopping now (the round in progress is abandoned)",
                     config.stop->signal_number());
      });
    }
  }

  size_t ready_count() const {
    return static_cast<size_t>(std::count_if(members.begin(), members.end(),
                                             [](const auto& m) { return m.second->active(); }));
  }

  void accept(asio::ip::tcp::socket socket) {
    auto m = std::make_shared<Member>();
    m->info.id = next_id++;
    m->conn = tcp::Connection::create(std::move(socket), config.limits, budget, config.tls);
    m->conn->set_dumper(dumper);
    m->info.address = m->conn->peer();
    members[m->info.id] = m;
    m->handshake_timer.emplace(io);
    m->handshake_timer->expires_after(config.handshake_timeout);
    std::weak_ptr<Member> weak = m;
    m->handshake_timer->async_wait([this, weak](const asio::error_code& ec) {
      auto member = weak.lock();
      if (ec || !member || member->ready) return;
      reject(*member, Error(ErrorKind::kOverloaded,
                            fmt::format("no hello within {} (handshake timeout)",
                                        seconds(config.handshake_timeout))));
    });
    const WorkerId id = m->info.id;
    m->conn->start([this, id](transport::InFrame frame) { on_frame(id, std::move(frame)); },
                   [this, id](const Error& reason) { on_close(id, reason); });
  }

  void reject(Member& m, const Error& why) {
    m.rejected = true;
    if (m.ready) {
      // Dropped mid-job: from now on it is neither listed nor sampled, and on_close says it left.
      spdlog::warn("dropping worker {}: {}", m.info.name, why.what());
    } else {
      spdlog::warn("rejected connection from {}: {}", m.info.address, why.what());
    }
    m.conn->send_error_and_close(why);
  }

  void on_frame(WorkerId id, transport::InFrame frame) {
    auto it = members.find(id);
    if (it == members.end()) return;
    Member& m = *it->second;
    transport::Envelope env;
    try {
      transport::decode_into(frame, config.limits, env);
    } catch (const Error& e) {
      if (!m.ready) return reject(m, e);
      const std::string msg = fmt::format("malformed message '{}' from {}: {}", env.kind,
                                          m.info.name, e.what());
      if (m.pending_id != 0 && (env.request_id == 0 || env.request_id == m.pending_id)) {
        send_refusal(m.info.id, m.pending_id, ErrorKind::kFailed, msg);
        return fail_pending(m, ErrorKind::kFailed, msg);
      }
      spdlog::warn("{} (discarded)", msg);
      return;
    }
    if (!m.ready) return hello(m, env);
    if (env.version != transport::kProtocolVersion) {
      const Error e(ErrorKind::kFailed,
                    fmt::format("protocol version {} in a message from {}, expected {}",
                                env.version, m.info.name, transport::kProtocolVersion));
      fail_pending(m, e.kind(), e.what());
      return reject(m, e);
    }
    if (env.request_id != 0 && env.request_id == m.pending_id) {
      if (env.error) {
        return fail_pending(m, env.error->kind,
                            fmt::format("worker {} reported: {}", m.info.name, env.error->message));
      }
      if (env.partial) {
        if (!m.on_part) {
          return fail_pending(m, ErrorKind::kFailed,
                              fmt::format("worker {} sent a partial '{}' to a request that takes "
                                          "one reply", m.info.name, env.kind));
        }
        const auto handler = m.on_part;
        (*handler)(from_envelope(std::move(env)));
        return;
      }
      auto on_reply = std::move(m.on_reply);
      clear_pending(m);
      spdlog::debug("reply '{}' from {} received ({})", env.kind, m.info.name,
                    transport::format_bytes(frame.size_bytes()));
      on_reply(from_envelope(std::move(env)));
      spdlog::debug("reply from {} handled", m.info.name);
      return;
    }
    if (env.kind == protocol::kError && env.error) {
      spdlog::warn("worker {} reported: {}", m.info.name, env.error->message);
      return;
    }
    spdlog::warn("discarding '{}' from {}: request {} is not pending (a reply after its deadline, or to "
                 "a request never sent)",
                 env.kind, m.info.name, env.request_id);
  }

  void hello(Member& m, transport::Envelope& env) {
    if (env.kind != protocol::kHello) {
      return reject(m, Error(ErrorKind::kFailed,
                             fmt::format("expected '{}' as the first message, got '{}'",
                                         protocol::kHello, env.kind)));
    }
    if (env.version != transport::kProtocolVersion) {
      return reject(m, Error(ErrorKind::kFailed,
                             fmt::format("protocol version mismatch: the worker speaks protocol "
                                         "{}, this coordinator speaks protocol {}; run the same "
                                         "Fedra release on both sides",
                                         env.version, transport::kProtocolVersion)));
    }
    Message hi;
    try {
      hi = from_envelope(std::move(env));
    } catch (const Error& e) {
      return reject(m, e);
    }
    if (!config.token.empty() && !protocol::same_secret(hi.option_or("token", ""), config.token)) {
      return reject(m, Error(ErrorKind::kFailed,
                             "authentication failed: the worker's token does not match the "
                             "coordinator's (check --token on both sides)"));
    }
    m.info.name = hi.sender.empty() ? fmt::format("worker-{}", m.info.id) : hi.sender;
    for (const auto& [id, other] : members) {
      if (other.get() != &m && other->active() && other->info.name == m.info.name) {
        return reject(m, Error(ErrorKind::kFailed,
                               fmt::format("a worker named '{}' is already connected (from {}); give each worker "
                                           "its own --name",
                                           m.info.name, other->info.address)));
      }
    }
    m.info.certificate = m.conn->peer_certificate();
    m.info.peer_address = hi.option_or("peer_address", "");
    const auto examples = hi.metrics.find("num_examples");
    if (examples == hi.metrics.end()) {
      return reject(m, Error(ErrorKind::kFailed, "hello lacks the metric 'num_examples' (the worker's count of "
                                                 "training examples)"));
    }
    if (!(examples->second >= 0) || examples->second != std::floor(examples->second) || examples->second > 1e15) {
      return reject(m, Error(ErrorKind::kFailed,
                             fmt::format("hello: num_examples must be a whole number >= 0, got {}", examples->second)));
    }
    m.info.num_examples = static_cast<int64_t>(examples->second);
    for (const auto& [name, t] : hi.tensors) {
      if (name != "label_histogram") continue;
      if (t.scalar_type() != at::kLong || t.dim() != 1) {
        return reject(m, Error(ErrorKind::kFailed, "hello: label_histogram must be int64 [classes]"));
      }
      const int64_t* p = t.data_ptr<int64_t>();
      int64_t sum = 0;
      for (int64_t c = 0; c < t.numel(); ++c) {
        if (p[c] < 0) {
          return reject(m, Error(ErrorKind::kFailed, fmt::format("hello: label_histogram has {} examples of class {}",
                                                                 p[c], c)));
        }
        sum += p[c];
      }
      if (sum != m.info.num_examples) {
        return reject(m, Error(ErrorKind::kFailed,
                               fmt::format("hello: label_histogram counts {} examples but num_examples is {}", sum,
                                           m.info.num_examples)));
      }
      for (const auto& [id, other] : members) {
        if (other.get() != &m && other->active() && !other->info.label_histogram.empty() &&
            static_cast<int64_t>(other->info.label_histogram.size()) != t.numel()) {
          return reject(m, Error(ErrorKind::kFailed,
                                 fmt::format("hello: label_histogram has {} classes, but worker {}'s has {}: "
                                             "the workers hold different datasets",
                                             t.numel(), other->info.name, other->info.label_histogram.size())));
        }
      }
      m.info.label_histogram.assign(p, p + t.numel());
    }
    m.ready = true;
    m.handshake_timer->cancel();
    Message welcome = protocol::make_welcome(config.job, m.info.id);
    welcome.options["peer_key"] = peer_key;
    m.conn->send(transport::encode(to_envelope(welcome), config.limits));
    spdlog::info("worker {} joined from {}{} ({} examples{}); {} connected", m.info.name,
                 m.info.address,
                 m.info.certificate.empty() ? std::string()
                                            : fmt::format(" with certificate '{}'", m.info.certificate),
                 m.info.num_examples,
                 m.info.label_histogram.empty()
                     ? std::string()
                     : fmt::format(", labels {}", fmt::join(m.info.label_histogram, "/")),
                 ready_count());
  }

  void on_close(WorkerId id, const Error& reason) {
    auto it = members.find(id);
    if (it == members.end()) return;
    auto m = it->second;
    closed_bytes_up += m->conn->bytes_received();
    closed_bytes_down += m->conn->bytes_sent();
    if (m->ready) {
      auto& b = closed_by_name[m->info.name];
      b.first += m->conn->bytes_received();
      b.second += m->conn->bytes_sent();
    }
    members.erase(it);
    if (m->handshake_timer) m->handshake_timer->cancel();
    if (!m->ready) {
      // Rejections were logged when made; anything else ended the connection before its hello.
      if (m->rejected) return;
      if (reason.kind() == ErrorKind::kDisconnected) {
        spdlog::warn("connection from {} closed before its hello: {}", m->info.address, reason.what());
      } else {  // the transport refused a malformed frame and told the peer why
        spdlog::warn("rejected connection from {}: {}", m->info.address, reason.what());
      }
      return;
    }
    const bool pending = m->pending_id != 0;
    if (m->rejected) {
      spdlog::info("worker {} left (dropped for a protocol error)", m->info.name);
    } else if (reason.kind() == ErrorKind::kDisconnected && !pending) {
      spdlog::info("worker {} left: {}", m->info.name, reason.what());
    } else {
      spdlog::warn("worker {} lost{}: {}", m->info.name, pending ? " mid-request" : "",
                   reason.what());
    }
    if (pending) fail_pending(*m, ErrorKind::kDisconnected, reason.what());
  }

  void clear_pending(Member& m) {
    m.pending_id = 0;
    m.on_part = nullptr;
    m.on_reply = nullptr;
    m.on_fail = nullptr;
  }

  // Tells a worker that its answer to `request_id` was refused and why (protocol: an `error`
  // envelope naming the request; the worker logs it and stays). Nothing if it is gone.
  void send_refusal(WorkerId id, uint64_t request_id, ErrorKind kind, const std::string& message) {
    auto it = members.find(id);
    if (it == members.end() || !it->second->conn->is_open()) return;
    transport::Envelope env;
    env.kind = protocol::kError;
    env.sender = protocol::kCoordinatorName;
    env.request_id = request_id;
    env.error = transport::WireError{kind, message};
    try {
      it->second->conn->send(transport::encode(env, config.limits));
    } catch (const Error& e) {
      spdlog::warn("cannot tell {} its reply was refused: {}", it->second->info.name, e.what());
    }
  }

  void fail_pending(Member& m, ErrorKind kind, const std::string& message) {
    if (m.pending_id == 0) return;
    auto on_fail = std::move(m.on_fail);
    clear_pending(m);
    on_fail(Failure{m.info.id, m.info.name, kind, message});
  }

  // Runs the io_context until `done()` or the deadline; false on deadline, or on stop unless
  // `even_if_stopping` (shutdown must still deliver its goodbyes after a signal).
  template <class Done>
  bool run_until(Done done, Deadline deadline, bool even_if_stopping = false) {
    return run_until_fn(done, [deadline] { return deadline; }, even_if_stopping);
  }

  template <class Done, class DeadlineFn>
  bool run_until_fn(Done done, DeadlineFn deadline_fn, bool even_if_stopping = false) {
    io.restart();
    while (!done()) {
      if (!stop && config.stop && config.stop->requested()) stop = true;  // requested before the watch ran
      if (stop && !even_if_stopping) return false;
      const Deadline deadline = deadline_fn();
      if (Clock::now() >= deadline) return false;
      io.run_one_until(deadline);
    }
    return true;
  }
};

TcpCohort::TcpCohort(CohortConfig config) : impl_(std::make_unique<Impl>(std::move(config))) {}

TcpCohort::~TcpCohort() {
  for (auto& [id, m] : impl_->members) {
    impl_->clear_pending(*m);
    m->conn->close(Error(ErrorKind::kDisconnected, "coordinator shutting down"));
  }
  impl_->listener->close();
  if (impl_->stop_watch) impl_->stop_watch->cancel();
  impl_->io.restart();
  impl_->io.poll();
}

std::string TcpCohort::local_address() const { return impl_->listener->local_endpoint().to_string(); }

size_t TcpCohort::size() const { return impl_->ready_count(); }

std::vector<WorkerInfo> TcpCohort::workers() const {
  std::vector<WorkerInfo> out;
  for (const auto& [id, m] : impl_->members) {
    if (m->active()) out.push_back(m->info);
  }
  return out;
}

bool TcpCohort::wait_for_workers(size_t n, Deadline deadline) {
  return impl_->run_until([&] { return impl_->ready_count() >= n; }, deadline);
}

std::vector<Failure> TcpCohort::exchange(std::vector<Instruction> instructions, const Exchange& handlers) {
  FEDRA_ASSERT(handlers.on_reply && handlers.deadline, "an exchange needs on_reply and deadline");
  std::vector<Failure> failures;
  size_t outstanding = 0;
  auto fail = [&failures, &handlers](Failure f) {
    failures.push_back(f);
    if (handlers.on_failure) handlers.on_failure(failures.back());
  };
  std::vector<std::shared_ptr<Impl::Member>> asked;
  for (auto& ins : instructions) {
    auto it = impl_->members.find(ins.worker);
    if (it == impl_->members.end() || !it->second->active()) {
      fail({ins.worker, it == impl_->members.end() ? fmt::format("worker #{}", ins.worker) : it->second->info.name,
            ErrorKind::kDisconnected, "not connected (it left before this request)"});
      continue;
    }
    auto m = it->second;
    FEDRA_ASSERT(m->pending_id == 0, "worker {} already has request {} pending", m->info.name,
                 m->pending_id);
    transport::Envelope env = to_envelope(ins.message);
    env.sender = protocol::kCoordinatorName;
    env.request_id = impl_->next_request++;
    std::optional<transport::OutFrame> frame;
    try {
      frame.emplace(transport::encode(env, impl_->config.limits));
    } catch (const Error& e) {
      fail({m->info.id, m->info.name, e.kind(), e.what()});
      continue;
    }
    m->pending_id = env.request_id;
    const WorkerInfo info = m->info;
    const uint64_t request_id = env.request_id;
    Impl* impl = impl_.get();
    if (handlers.on_part) {
      m->on_part = std::make_shared<std::function<void(Message&&)>>([impl, &handlers, info, request_id](Message&& part) {
        try {
          handlers.on_part(info, std::move(part));
        } catch (const std::exception& e) {
          auto member = impl->members.find(info.id);
          impl->send_refusal(info.id, request_id, ErrorKind::kFailed, e.what());
          if (member != impl->members.end()) impl->fail_pending(*member->second, ErrorKind::kFailed, e.what());
        }
      });
    }
    // A reply the strategy refuses (throws on) is a failure here and an error envelope there.
    m->on_reply = [&fail, &outstanding, &handlers, info, impl, request_id](Message&& reply) {
      --outstanding;
      try {
        handlers.on_reply(info, std::move(reply));
      } catch (const Error& e) {
        impl->send_refusal(info.id, request_id, e.kind(), e.what());
        fail({info.id, info.name, e.kind(), e.what()});
      } catch (const std::exception& e) {
        impl->send_refusal(info.id, request_id, ErrorKind::kFailed, e.what());
        fail({info.id, info.name, ErrorKind::kFailed, e.what()});
      }
    };
    m->on_fail = [&fail, &outstanding](Failure f) {
      --outstanding;
      fail(std::move(f));
    };
    const uint64_t frame_bytes = frame->size_bytes();
    m->conn->send(std::move(*frame), [name = info.name, frame_bytes]() {
      spdlog::debug("request to {} written ({})", name, transport::format_bytes(frame_bytes));
    });
    asked.push_back(m);
    ++outstanding;
  }
  bool finished = impl_->run_until_fn([&] { return outstanding == 0; }, handlers.deadline);
  while (!finished && !impl_->stop && handlers.on_deadline && handlers.on_deadline()) {
    finished = impl_->run_until_fn([&] { return outstanding == 0; }, handlers.deadline);
  }
  if (!finished) {
    const std::string why = impl_->stop
                                ? std::string("interrupted by a signal")
                                : fmt::format("no reply before the deadline");
    for (auto& m : asked) {
      if (m->pending_id != 0) {
        // Told, so that a worker that was away (stopped, swapped out) skips the stale request
        // instead of doing its work first.
        if (!impl_->stop) {
          impl_->send_refusal(m->info.id, m->pending_id, ErrorKind::kOverloaded,
                              fmt::format("request {} expired ({}); the coordinator moved on", m->pending_id, why));
        }
        impl_->fail_pending(*m, impl_->stop ? ErrorKind::kFailed : ErrorKind::kOverloaded, why);
      }
    }
  }
  return failures;
}

bool TcpCohort::post(WorkerId worker, const Message& message) {
  auto it = impl_->members.find(worker);
  if (it == impl_->members.end()) return false;
  Impl::Member& m = *it->second;
  if (m.pending_id == 0 || !m.conn->is_open()) return false;
  transport::Envelope env = to_envelope(message);
  env.sender = protocol::kCoordinatorName;
  env.request_id = m.pending_id;
  env.partial = true;
  m.conn->send(transport::encode(env, impl_->config.limits));
  return true;
}

void TcpCohort::cancel(WorkerId worker, const std::string& reason) {
  auto it = impl_->members.find(worker);
  if (it == impl_->members.end()) return;
  Impl::Member& m = *it->second;
  if (m.pending_id == 0) return;
  if (m.conn->is_open()) {
    transport::Envelope env;
    env.kind = protocol::kError;
    env.sender = protocol::kCoordinatorName;
    env.request_id = m.pending_id;
    env.partial = true;
    env.error = transport::WireError{ErrorKind::kFailed, reason};
    m.conn->send(transport::encode(env, impl_->config.limits));
  }
  impl_->fail_pending(m, ErrorKind::kFailed, "cancelled by the coordinator: " + reason);
}

void TcpCohort::shutdown(const std::string& reason, std::chrono::milliseconds grace) {
  size_t unsent = 0;
  Message bye(protocol::kShutdown);
  bye.sender = protocol::kCoordinatorName;
  bye.options["reason"] = reason;
  const transport::Envelope env = to_envelope(bye);
  for (auto& [id, m] : impl_->members) {
    impl_->clear_pending(*m);
    if (!m->ready || !m->conn->is_open()) continue;
    ++unsent;
    m->conn->send(transport::encode(env, impl_->config.limits), [&unsent]() { --unsent; });
  }
  impl_->run_until([&] { return unsent == 0; }, Clock::now() + grace, /*even_if_stopping=*/true);
  for (auto& [id, m] : impl_->members) {
    m->conn->close(Error(ErrorKind::kDisconnected, "job finished"));
  }
  impl_->listener->close();
  impl_->io.restart();
  impl_->io.poll();
}

uint64_t TcpCohort::bytes_up() const {
  uint64_t n = impl_->closed_bytes_up;
  for (const auto& [id, m] : impl_->members) n += m->conn->bytes_received();
  return n;
}

uint64_t TcpCohort::bytes_down() const {
  uint64_t n = impl_->closed_bytes_down;
  for (const auto& [id, m] : impl_->members) n += m->conn->bytes_sent();
  return n;
}

std::vector<WorkerBytes> TcpCohort::bytes_by_worker() const {
  auto by_name = impl_->closed_by_name;
  for (const auto& [id, m] : impl_->members) {
    if (!m->ready) continue;
    auto& b = by_name[m->info.name];
    b.first += m->conn->bytes_received();
    b.second += m->conn->bytes_sent();
  }
  std::vector<WorkerBytes> out;
  for (const auto& [name, b] : by_name) out.push_back({name, b.first, b.second});
  return out;
}

uint64_t TcpCohort::peak_receive_bytes() const { return impl_->budget->peak(); }

bool TcpCohort::stop_requested() const { return impl_->stop || (impl_->config.stop && impl_->config.stop->requested()); }

}  // namespace fedra
