// Connecting with retry, accepting, and the blocking Channel over a Connection
// (transport/tcp/connection.h).
#include <algorithm>
#include <thread>

#include "transport/tcp/internal.h"

namespace fedra::transport::tcp {

asio::ip::tcp::socket connect_with_retry(asio::io_context& io, const Endpoint& endpoint,
                                         std::chrono::milliseconds timeout, const std::string& hint) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  auto backoff = std::chrono::milliseconds(100);
  std::string last_error;
  asio::ip::tcp::resolver resolver(io);
  for (;;) {
    asio::error_code ec;
    auto results = resolver.resolve(endpoint.host, std::to_string(endpoint.port), ec);
    if (!ec) {
      asio::ip::tcp::socket socket(io);
      asio::connect(socket, results, ec);
      if (!ec) {
        set_nodelay(socket);
        return socket;
      }
    }
    last_error = ec.message();
    const auto now = std::chrono::steady_clock::now();
    if (now + backoff > deadline) break;
    std::this_thread::sleep_for(backoff);
    backoff = std::min(backoff * 2, std::chrono::milliseconds(2000));
  }
  FEDRA_THROW(ErrorKind::kDisconnected,
              "cannot connect to {} within {} s (last error: {}); {}", endpoint.to_string(),
              timeout.count() / 1000.0, last_error, hint);
}

Listener::Listener(asio::io_context& io, const Endpoint& endpoint, AcceptHandler on_accept)
    : acceptor_(io), on_accept_(std::move(on_accept)) {
  asio::error_code ec;
  asio::ip::tcp::resolver resolver(io);
  auto results = resolver.resolve(endpoint.host, std::to_string(endpoint.port),
                                  asio::ip::tcp::resolver::passive, ec);
  FEDRA_REQUIRE(!ec && !results.empty(), "cannot resolve listen address '{}': {}",
                endpoint.to_string(), ec.message());
  const auto ep = results.begin()->endpoint();
  acceptor_.open(ep.protocol(), ec);
  if (!ec) acceptor_.set_option(asio::ip::tcp::acceptor::reuse_address(true), ec);
  if (!ec) acceptor_.bind(ep, ec);
  if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
  FEDRA_REQUIRE(!ec, "cannot listen on {}: {} (is another process using the port?)",
                endpoint.to_string(), ec.message());
  accept_next();
}

Endpoint Listener::local_endpoint() const {
  auto ep = acceptor_.local_endpoint();
  return Endpoint{ep.address().to_string(), ep.port()};
}

void Listener::close() {
  asio::error_code ec;
  acceptor_.close(ec);
}

void Listener::accept_next() {
  acceptor_.async_accept([this](const asio::error_code& ec, asio::ip::tcp::socket socket) {
    if (ec == asio::error::operation_aborted || !acceptor_.is_open()) return;
    if (!ec) {
      set_nodelay(socket);
      on_accept_(std::move(socket));
    }
    accept_next();
  });
}

// ---------------------------------------------------------------------------------------------

std::unique_ptr<BlockingChannel> BlockingChannel::connect(const Endpoint& endpoint,
                                                          const Limits& limits,
                                                          std::chrono::milliseconds timeout,
                                                          std::shared_ptr<FrameDumper> dumper,
                                                          std::shared_ptr<TlsContext> tls) {
  std::unique_ptr<BlockingChannel> ch(new BlockingChannel());
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  auto socket = connect_with_retry(ch->io_, endpoint, timeout);
  const bool use_tls = tls != nullptr;
  ch->conn_ = Connection::create(std::move(socket), limits, nullptr, std::move(tls), endpoint.host);
  ch->conn_->set_dumper(std::move(dumper));
  BlockingChannel* raw = ch.get();
  ch->conn_->start([raw](InFrame frame) { raw->inbox_.push_back(std::move(frame)); },
                   [raw](const Error& e) { raw->closed_ = e; });
  if (use_tls) {
    ch->io_.restart();
    while (!ch->conn_->ready() && !ch->closed_ && std::chrono::steady_clock::now() < deadline) {
      ch->io_.run_one_until(deadline);
      if (ch->io_.stopped()) ch->io_.restart();
    }
    if (ch->closed_) throw *ch->closed_;
    if (!ch->conn_->ready()) {
      FEDRA_THROW(ErrorKind::kOverloaded, "TLS handshake with {} did not finish within {} s",
                  endpoint.to_string(), timeout.count() / 1000.0);
    }
  }
  return ch;
}

BlockingChannel::~BlockingChannel() {
  if (conn_) {
    conn_->close(Error(ErrorKind::kDisconnected, "channel closed"));
    io_.restart();
    io_.poll();
  }
}

void BlockingChannel::send(const Envelope& envelope) {
  if (closed_) throw *closed_;
  bool written = false;
  conn_->send(encode(envelope, conn_->limits()), [&written]() { written = true; });
  io_.restart();
  while (!written && !closed_) io_.run_one();
  if (written) return;
  // A peer that refuses a message says why before closing: report that, not just the close.
  for (const InFrame& f : inbox_) {
    Envelope env;
    try {
      decode_into(f, conn_->limits(), env);
    } catch (const Error&) {
      continue;
    }
    if (env.kind == kErrorKind && env.error) {
      throw Error(env.error->kind, fmt::format("{} refused the message: {}", conn_->peer(),
                                               env.error->message));
    }
  }
  throw *closed_;
}

Envelope BlockingChannel::receive(std::optional<std::chrono::milliseconds> timeout) {
  const auto deadline =
      timeout ? std::chrono::steady_clock::now() + *timeout : std::chrono::steady_clock::time_point::max();
  io_.restart();
  while (inbox_.empty() && !closed_) {
    if (timeout) {
      const auto now = std::chrono::steady_clock::now();
      if (now >= deadline) {
        FEDRA_THROW(ErrorKind::kOverloaded, "no message from {} within {} s", conn_->peer(),
                    timeout->count() / 1000.0);
      }
      io_.run_one_for(deadline - now);
    } else {
      io_.run_one();
    }
    if (io_.stopped()) io_.restart();
  }
  if (inbox_.empty()) throw *closed_;
  InFrame frame = std::move(inbox_.front());
  inbox_.pop_front();
  return decode(frame, conn_->limits());
}

std::optional<Envelope> BlockingChannel::poll_receive() {
  io_.restart();
  io_.poll();
  if (inbox_.empty()) return std::nullopt;
  InFrame frame = std::move(inbox_.front());
  inbox_.pop_front();
  return decode(frame, conn_->limits());
}

void BlockingChannel::close() {
  conn_->close(Error(ErrorKind::kDisconnected, "closed by this side"));
  io_.restart();
  io_.poll();
}

}  // namespace fedra::transport::tcp
