#include "core/net/peer.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include <asio.hpp>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "core/kit/error.h"
#include "core/kit/message.h"
#include "core/net/protocol.h"
#include "transport/endpoint.h"
#include "transport/tcp/connection.h"
#include "transport/tcp/tls.h"

namespace fedra {

namespace tcp = transport::tcp;
using Clock = std::chrono::steady_clock;

namespace {

const std::string* option_of(const transport::Envelope& env, const std::string& key) {
  for (const auto& [k, v] : env.options) {
    if (k == key) return &v;
  }
  return nullptr;
}

transport::Envelope control(const std::string& kind, const std::string& sender) {
  transport::Envelope env;
  env.kind = kind;
  env.sender = sender;
  return env;
}

}  // namespace

std::string format_peers(const std::vector<PeerAddress>& peers) {
  std::string out;
  for (const auto& p : peers) {
    if (!out.empty()) out += ',';
    out += p.name + "=" + p.address;
  }
  return out;
}

uint64_t first_peer_session() {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch()).count());
}

std::vector<PeerAddress> parse_peers(const std::string& text) {
  std::vector<PeerAddress> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    const auto eq = item.find('=');
    FEDRA_REQUIRE(eq != std::string::npos && eq > 0 && eq + 1 < item.size(),
                  "peer list entry '{}' is not NAME=HOST:PORT", item);
    out.push_back({item.substr(0, eq), item.substr(eq + 1)});
  }
  return out;
}

// ---------------------------------------------------------------------------------------------

struct PeerLink {
  std::shared_ptr<tcp::Connection> conn;
  std::string address;
  std::string sender;  // set by its hello
  uint64_t session = 0;
  bool greeted = false;
  Clock::time_point since = Clock::now();
  std::deque<transport::Envelope> early;  // frames after the hello, before a ring took it
  PeerRing* ring = nullptr;               // the ring using it, once taken
};

PeerHub::PeerHub(std::string name, PeerConfig config, const std::string& coordinator_local_host)
    : name_(std::move(name)), config_(std::move(config)), io_(std::make_unique<asio::io_context>()) {
  FEDRA_REQUIRE((config_.tls_server == nullptr) == (config_.tls_client == nullptr),
                "peer links need both TLS contexts or neither");
  const std::string listen = config_.listen.empty() ? fmt::format("{}:0", coordinator_local_host.find(':') != std::string::npos
                                                                             ? "[" + coordinator_local_host + "]"
                                                                             : coordinator_local_host)
                                                    : config_.listen;
  tcp::Endpoint endpoint;
  try {
    endpoint = tcp::parse_endpoint(listen);
    listener_ = std::make_unique<tcp::Listener>(*io_, endpoint, [this](asio::ip::tcp::socket socket) {
      accept(tcp::Connection::create(std::move(socket), config_.limits, nullptr, config_.tls_server));
    });
  } catch (const Error& e) {
    FEDRA_FAIL("worker {} cannot listen for its peers on {}: {} (set --peer-listen HOST:PORT)", name_, listen, e.what());
  }
  advertised_ = transport::advertised_address(config_.advertise, listener_->local_endpoint().to_string());
  spdlog::info("worker {}: peer port {} (advertised as {}{})", name_, listener_->local_endpoint().to_string(),
                advertised_, config_.tls_server ? ", mutual TLS" : "");
}

PeerHub::~PeerHub() {
  for (auto& p : pending_) p->conn->close(Error(ErrorKind::kDisconnected, "worker exits"));
  pending_.clear();
  if (listener_) listener_->close();
  io_->restart();
  io_->poll();
}

asio::io_context& PeerHub::io() { return *io_; }

void PeerHub::refuse(const std::shared_ptr<PeerLink>& p, const std::string& why) {
  ++refused_;
  spdlog::warn("worker {}: refused a peer connection from {}: {}", name_, p->address, why);
  p->conn->send_error_and_close(Error(ErrorKind::kFailed, fmt::format("worker {} refused this peer connection: {}",
                                                                      name_, why)));
  forget(p.get());
}

void PeerHub::forget(const PeerLink* p) {
  pending_.erase(std::remove_if(pending_.begin(), pending_.end(),
                                [p](const std::shared_ptr<PeerLink>& q) { return q.get() == p; }),
                 pending_.end());
}

void PeerHub::accept(std::shared_ptr<tcp::Connection> conn) {
  auto p = std::make_shared<PeerLink>();
  p->conn = conn;
  p->address = conn->peer();
  pending_.push_back(p);
  std::weak_ptr<PeerLink> weak = p;
  conn->start(
      [this, weak](transport::InFrame frame) {
        auto link = weak.lock();
        if (!link) return;
        transport::Envelope env;
        try {
          env = transport::decode(frame, config_.limits);
        } catch (const Error& e) {
          if (link->ring) return link->ring->fail(fmt::format("malformed frame from {}: {}", link->sender, e.what()));
          return refuse(link, e.what());
        }
        if (link->ring) {
          if (link->ring->handler_) return link->ring->handler_(std::move(env));
          link->ring->early_.push_back(std::move(env));
          return;
        }
        if (link->greeted) {
          link->early.push_back(std::move(env));
          return;
        }
        if (env.version != transport::kProtocolVersion) {
          return refuse(link, fmt::format("protocol version {}, this worker speaks {}", env.version,
                                       transport::kProtocolVersion));
        }
        if (env.kind != peer::kHello) return refuse(link, fmt::format("expected '{}', got '{}'", peer::kHello, env.kind));
        const std::string* key = option_of(env, "key");
        if (key_.empty()) return refuse(link, "this worker has not joined a job yet");
        if (!key || !protocol::same_secret(*key, key_)) {
          return refuse(link, "wrong peer key: the connection is not from a worker of this job");
        }
        const std::string* session = option_of(env, "session");
        char* end = nullptr;
        link->session = session ? std::strtoull(session->c_str(), &end, 10) : 0;
        if (!session || session->empty() || *end != '\0') return refuse(link, "a peer.hello without a ring session");
        if (link->session < session_) {
          return refuse(link, fmt::format("ring session {} is over (now {})", link->session, session_));
        }
        link->sender = env.sender;
        link->greeted = true;
        spdlog::debug("worker {}: peer {} connected from {} (session {}){}", name_, link->sender, link->address, link->session,
                      link->conn->uses_tls() ? fmt::format(" with certificate '{}'", link->conn->peer_certificate()) : "");
        link->conn->send(transport::encode(control(peer::kWelcome, name_), config_.limits));
      },
      [this, weak](const Error& reason) {
        auto link = weak.lock();
        if (!link) return;
        if (link->ring) return link->ring->fail(fmt::format("the link from {} ({}) closed: {}", link->sender, link->address, reason.what()));
        if (!link->greeted) {
          ++refused_;
          spdlog::warn("worker {}: peer connection from {} closed before its hello: {}", name_, link->address,
                       reason.what());
        }
        forget(link.get());
      });
}

struct PeerHub::Dial {
  bool welcomed = false;
  std::optional<std::string> error;
  std::deque<transport::Envelope> frames;  // after the welcome, before the ring takes the link
};

// Links of older rings (and hellos for them) are closed now: every member has finished them,
// since the coordinator starts a new ring only after every member's reply.
void PeerHub::close_older_links(std::chrono::milliseconds timeout) {
  for (auto it = pending_.begin(); it != pending_.end();) {
    auto& p = *it;
    if ((p->greeted && p->session < session_) || (!p->greeted && Clock::now() - p->since > timeout)) {
      p->ring = nullptr;
      p->conn->close(Error(ErrorKind::kDisconnected, "an older ring"));
      it = pending_.erase(it);
    } else {
      ++it;
    }
  }
}

// A member that cannot form its links tells the members that linked to it, so they fail now
// rather than at their timeout (and tell theirs in turn).
void PeerHub::tell_linked(uint64_t session, bool closed, const std::string& why) {
  io_->restart();
  for (int i = 0; i < 100 && io_->poll() > 0; ++i) io_->restart();  // hellos already here, too
  for (auto& p : pending_) {
    if (p->greeted && !p->ring && p->session == session) {
      p->conn->send_error_and_close(Error(
          ErrorKind::kFailed, fmt::format("worker {} could not join {} session {}: {}", name_, closed ? "ring" : "chain",
                                          session, why)));
    }
  }
  io_->poll();
  if (io_->stopped()) io_->restart();
}

// Connects to the next member and says hello; `st` hears its welcome (or why not).
std::shared_ptr<tcp::Connection> PeerHub::dial(const PeerAddress& next, uint64_t session,
                                               std::chrono::milliseconds timeout, const std::shared_ptr<Dial>& st) {
  asio::ip::tcp::socket socket = tcp::connect_with_retry(
      *io_, tcp::parse_endpoint(next.address), std::min(timeout, std::chrono::milliseconds(10000)),
      "is that worker alive, and is its --advertise address reachable from here?");
  auto out = tcp::Connection::create(std::move(socket), config_.limits, nullptr, config_.tls_client, next.name);
  const transport::Limits limits = config_.limits;
  out->start(
      [st, limits](transport::InFrame frame) {
        try {
          transport::Envelope env = transport::decode(frame, limits);
          if (env.kind == peer::kWelcome && !st->welcomed) st->welcomed = true;
          else if (env.error && !st->error) st->error = env.error->message;
          else if (st->welcomed) st->frames.push_back(std::move(env));
        } catch (const Error& e) {
          if (!st->error) st->error = e.what();
        }
      },
      [st](const Error& reason) {
        if (!st->error) st->error = reason.what();
      });
  transport::Envelope hello = control(peer::kHello, name_);
  hello.options.emplace_back("key", key_);
  hello.options.emplace_back("session", std::to_string(session));
  out->send(transport::encode(hello, config_.limits));
  return out;
}

std::shared_ptr<PeerLink> PeerHub::accepted_link(const std::string& from, uint64_t session) {
  for (auto& p : pending_) {
    if (p->greeted && !p->ring && p->sender == from && p->session == session) return p;
  }
  return nullptr;
}

// The formed links, and the frames that came early on them, to the ring.
void PeerHub::hand_over(PeerRing& ring, std::shared_ptr<tcp::Connection> out, Dial& st, std::shared_ptr<PeerLink> in) {
  PeerRing* raw = &ring;
  if (out) {
    const PeerAddress to = ring.next();
    const transport::Limits limits = config_.limits;
    out->set_handlers(
        [raw, to, limits](transport::InFrame frame) {
          transport::Envelope env;
          try {
            env = transport::decode(frame, limits);
          } catch (const Error& e) {
            return raw->fail(fmt::format("malformed frame from {}: {}", to.name, e.what()));
          }
          if (raw->next_handler_) return raw->next_handler_(std::move(env));
          raw->early_next_.push_back(std::move(env));
        },
        [raw, to](const Error& reason) {
          raw->fail(fmt::format("the link to {} ({}) closed: {}", to.name, to.address, reason.what()));
        });
    ring.out_ = out;
    for (auto& env : st.frames) ring.early_next_.push_back(std::move(env));
  }
  if (in) {
    in->ring = raw;
    ring.in_ = in->conn;
    ring.in_link_ = in;
    for (auto& env : in->early) ring.early_.push_back(std::move(env));
    in->early.clear();
  }
}

std::unique_ptr<PeerRing> PeerHub::ring(const std::vector<PeerAddress>& members, size_t rank, uint64_t session,
                                        std::chrono::milliseconds timeout, bool closed) {
  FEDRA_REQUIRE(rank < members.size() && members[rank].name == name_,
                "ring: worker {} is not member {} of [{}]", name_, rank, format_peers(members));
  session_ = std::max(session_, session);
  close_older_links(timeout);
  auto ring = std::make_unique<PeerRing>(*this, members, rank, session, closed);
  if (members.size() == 1) return ring;
  const auto deadline = Clock::now() + timeout;
  const PeerAddress& next = ring->next();
  const PeerAddress& prev = ring->prev();
  const auto what = [&](const std::string& why) {
    return fmt::format("worker {} cannot link to its {} peer {} at {}: {}", name_, closed ? "ring" : "chain",
                       next.name, next.address, why);
  };
  auto st = std::make_shared<Dial>();
  std::shared_ptr<tcp::Connection> out;
  if (ring->has_next()) {
    try {
      out = dial(next, session, timeout, st);
    } catch (const Error& e) {
      tell_linked(session, closed, what(e.what()));
      FEDRA_THROW(ErrorKind::kDisconnected, "{}", what(e.what()));
    }
  } else {
    st->welcomed = true;  // the end of a chain links to nobody
  }
  std::shared_ptr<PeerLink> in;
  const auto linked = [&] { return st->welcomed && (!ring->has_prev() || (in = accepted_link(prev.name, session))); };
  io_->restart();
  while (!linked() && !st->error && Clock::now() < deadline) {
    io_->run_one_until(deadline);
    if (io_->stopped()) io_->restart();
  }
  if (st->error) {
    if (out) out->close(Error(ErrorKind::kDisconnected, "ring setup failed"));
    tell_linked(session, closed, what(*st->error));
    const bool tls_failed = config_.tls_client && st->error->find("TLS") != std::string::npos;
    FEDRA_THROW(ErrorKind::kDisconnected, "{}{}", what(*st->error),
                tls_failed ? " (a peer link checks that each worker's certificate carries its name and may serve "
                             "TLS: make worker certificates with this release's `fedra certs`, or set "
                             "the strategy's topology=star)"
                           : "");
  }
  if (!st->welcomed || (ring->has_prev() && !in)) {
    if (out) out->close(Error(ErrorKind::kDisconnected, "ring setup timed out"));
    tell_linked(session, closed, "timed out");
    FEDRA_THROW(ErrorKind::kOverloaded, "worker {} formed no {} within {} s: {}", name_, closed ? "ring" : "chain",
                std::chrono::duration<double>(timeout).count(),
                !st->welcomed ? fmt::format("{} at {} did not accept its link", next.name, next.address)
                              : fmt::format("{} at {} did not connect", prev.name, prev.address));
  }
  hand_over(*ring, out, *st, in);
  return ring;
}

std::unique_ptr<PeerRing> join_links(const Message& request, PeerHub* hub, const std::string& worker, size_t rank,
                                     size_t world, std::chrono::milliseconds timeout, bool closed) {
  if (request.options.count("peers") == 0) return nullptr;
  FEDRA_REQUIRE(hub != nullptr,
                "{}: worker {} has no peer port for direct links (with TLS, every worker needs --tls-cert and "
                "--tls-key)", request.kind, worker);
  const auto members = parse_peers(request.option("peers"));
  FEDRA_REQUIRE(members.size() == world, "{}: {} peers for {} workers", request.kind, members.size(), world);
  return hub->ring(members, rank, std::stoull(request.option("session")), timeout, closed);
}

// ---------------------------------------------------------------------------------------------

PeerRing::PeerRing(PeerHub& hub, std::vector<PeerAddress> members, size_t rank, uint64_t session, bool closed)
    : hub_(hub), members_(std::move(members)), rank_(rank), session_(session), closed_(closed) {}

PeerRing::~PeerRing() {
  // The links stay open until the next ring (or the hub) closes them: a neighbour may still be
  // reading the last frames this worker sent.
  if (in_link_) in_link_->ring = nullptr;
  if (out_) {
    out_->set_handlers([](transport::InFrame) {}, [](const Error&) {});
    auto p = std::make_shared<PeerLink>();
    p->conn = out_;
    p->greeted = true;
    p->sender = next().name;
    p->session = session_;
    hub_.pending_.push_back(p);
  }
}

void PeerRing::throw_failed() const {
  FEDRA_THROW(ErrorKind::kDisconnected, "worker {}: {} step failed: {}", hub_.name_, closed_ ? "ring" : "chain",
              *failed_);
}

void PeerRing::fail(const std::string& reason) {
  if (!failed_) failed_ = reason;
}

void PeerRing::send(const transport::Envelope& envelope, std::function<void()> on_written) {
  FEDRA_REQUIRE(out_ != nullptr, "worker {} has no next peer to send '{}' to ({})", hub_.name_, envelope.kind,
                describe());
  out_->send(transport::encode(envelope, hub_.config_.limits), std::move(on_written));
}

void PeerRing::send_prev(const transport::Envelope& envelope, std::function<void()> on_written) {
  FEDRA_REQUIRE(in_ != nullptr, "worker {} has no previous peer to send '{}' to ({})", hub_.name_, envelope.kind,
                describe());
  in_->send(transport::encode(envelope, hub_.config_.limits), std::move(on_written));
}

namespace {
// Installs a link's handler and hands it the frames that arrived before it.
void take_over(PeerRing::Handler& slot, std::deque<transport::Envelope>& early, PeerRing::Handler handler) {
  slot = std::move(handler);
  while (!early.empty()) {
    auto env = std::move(early.front());
    early.pop_front();
    slot(std::move(env));
  }
}
}  // namespace

void PeerRing::on_frame(Handler handler) { take_over(handler_, early_, std::move(handler)); }
void PeerRing::on_frame_from_next(Handler handler) { take_over(next_handler_, early_next_, std::move(handler)); }

std::string PeerRing::describe() const {
  if (members_.size() == 1) return hub_.name_ + " alone";
  return fmt::format("{}{}{}", has_prev() ? prev().name + " -> " : "", hub_.name_,
                     has_next() ? " -> " + next().name : "");
}

void PeerRing::progress() {
  if (members_.size() == 1) return;
  hub_.io_->poll();
  if (hub_.io_->stopped()) hub_.io_->restart();
  if (failed_) throw_failed();
}

void PeerRing::wait(const std::function<bool()>& done, Clock::time_point deadline, const std::string& what) {
  while (!done()) {
    if (failed_) throw_failed();
    if (Clock::now() >= deadline) {
      FEDRA_THROW(ErrorKind::kOverloaded, "worker {}: {} did not finish in time ({}: {})", hub_.name_, what,
                  closed_ ? "ring" : "chain", describe());
    }
    hub_.io_->run_one_until(deadline);
    if (hub_.io_->stopped()) hub_.io_->restart();
  }
}

void PeerRing::abort(const std::string& reason) {
  fail(reason);
  if (out_) out_->close(Error(ErrorKind::kFailed, reason));
  if (in_) in_->close(Error(ErrorKind::kFailed, reason));
  hub_.io_->poll();
  if (hub_.io_->stopped()) hub_.io_->restart();
}

uint64_t PeerRing::bytes_sent() const {
  return (out_ ? out_->bytes_sent() : 0) + (in_ ? in_->bytes_sent() : 0);
}
uint64_t PeerRing::bytes_received() const {
  return (out_ ? out_->bytes_received() : 0) + (in_ ? in_->bytes_received() : 0);
}

bool can_link(const std::vector<WorkerInfo>& workers) {
  return workers.size() >= 2 && std::all_of(workers.begin(), workers.end(),
                                            [](const WorkerInfo& w) { return !w.peer_address.empty(); });
}

void ask_to_link(std::vector<Instruction>& instructions, const std::vector<WorkerInfo>& members, uint64_t session,
                 const std::string& what) {
  std::vector<PeerAddress> peers;
  for (const auto& w : members) {
    FEDRA_REQUIRE(!w.peer_address.empty(),
                  "{}: worker {} reported no peer port (a worker with TLS needs --tls-cert and --tls-key to link "
                  "to others; or use topology=star)", what, w.name);
    peers.push_back({w.name, w.peer_address});
  }
  const std::string listed = format_peers(peers);
  for (auto& ins : instructions) {
    ins.message.options["peers"] = listed;
    ins.message.options["session"] = std::to_string(session);
  }
}

}  // namespace fedra
