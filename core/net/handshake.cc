// TcpCohort's connections (core/net/tcp_cohort.h), from accept to welcome and to their end: the
// handshake (protocol version, token, name, data summary), refusals with a reason, the frames of
// a connection routed to its pending request.
#include <algorithm>
#include <cmath>

#include <spdlog/spdlog.h>

#include "core/net/protocol.h"
#include "core/net/tcp_cohort_impl.h"
#include "transport/tcp/tls.h"

namespace fedra {

namespace {

std::string seconds(Clock::duration d) {
  return fmt::format("{:.1f} s", std::chrono::duration<double>(d).count());
}

}  // namespace

void TcpCohort::Impl::accept(asio::ip::tcp::socket socket) {
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

void TcpCohort::Impl::reject(Member& m, const Error& why) {
  m.rejected = true;
  if (m.ready) {
    // Dropped mid-job: from now on it is neither listed nor sampled, and on_close says it left.
    spdlog::warn("dropping worker {}: {}", m.info.name, why.what());
  } else {
    spdlog::warn("rejected connection from {}: {}", m.info.address, why.what());
  }
  m.conn->send_error_and_close(why);
}

void TcpCohort::Impl::on_frame(WorkerId id, transport::InFrame frame) {
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
      if (!m.on_part) {  // refused, and the worker told so (docs/protocol.md: an error envelope)
        const std::string msg = fmt::format("worker {} sent a partial '{}' to a request that takes one reply",
                                            m.info.name, env.kind);
        send_refusal(m.info.id, m.pending_id, ErrorKind::kFailed, msg);
        return fail_pending(m, ErrorKind::kFailed, msg);
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

void TcpCohort::Impl::hello(Member& m, transport::Envelope& env) {
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

void TcpCohort::Impl::on_close(WorkerId id, const Error& reason) {
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

}  // namespace fedra
