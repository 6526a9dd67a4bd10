#include "transport/tcp/connection.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <thread>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "transport/tcp/internal.h"
#include "transport/tcp/tls.h"

namespace fedra::transport::tcp {

namespace {

std::string describe(const asio::ip::tcp::socket& socket) {
  asio::error_code ec;
  auto ep = socket.remote_endpoint(ec);
  if (ec) return "<unknown peer>";
  return fmt::format("{}:{}", ep.address().to_string(), ep.port());
}

constexpr uint64_t kLowWater = uint64_t{1} << 20;

void set_low_water(asio::ip::tcp::socket& socket, uint64_t bytes) {
  asio::error_code ec;
  if (socket.is_open()) socket.set_option(asio::socket_base::receive_low_watermark(static_cast<int>(bytes)), ec);
}

}  // namespace

void set_nodelay(asio::ip::tcp::socket& socket) {
  asio::error_code ec;
  socket.set_option(asio::ip::tcp::no_delay(true), ec);
}

// ---------------------------------------------------------------------------------------------

FrameDumper::FrameDumper(std::string dir) : dir_(std::move(dir)) {
  std::error_code ec;
  std::filesystem::create_directories(dir_, ec);
  FEDRA_REQUIRE(!ec, "cannot create frame dump directory '{}': {}", dir_, ec.message());
}

void FrameDumper::dump(bool sent, const std::string& peer, const std::vector<ConstBytes>& pieces) {
  std::string who = peer;
  for (char& c : who) {
    if (c == ':' || c == '/' || c == '[' || c == ']') c = '_';
  }
  const std::string path = fmt::format("{}/{:06d}-{}-{}.bin", dir_, ++count_, sent ? "sent" : "recv", who);
  std::ofstream out(path, std::ios::binary);
  for (const auto& p : pieces) out.write(reinterpret_cast<const char*>(p.data), static_cast<std::streamsize>(p.size));
  FEDRA_REQUIRE(out.good(), "cannot write frame dump '{}'", path);
}

void ReceiveBudget::acquire(uint64_t bytes, std::function<void()> start) {
  // First come, first served: a small body does not overtake a large one already waiting.
  if (waiting_.empty() && (in_use_ == 0 || in_use_ + bytes <= capacity_)) {
    in_use_ += bytes;
    peak_ = std::max(peak_, in_use_);
    start();
  } else {
    waiting_.emplace_back(bytes, std::move(start));
  }
}

void ReceiveBudget::release(uint64_t bytes) {
  in_use_ -= std::min(bytes, in_use_);
  while (!waiting_.empty() && (in_use_ == 0 || in_use_ + waiting_.front().first <= capacity_)) {
    auto [n, start] = std::move(waiting_.front());
    waiting_.pop_front();
    in_use_ += n;
    peak_ = std::max(peak_, in_use_);
    start();
  }
}

// ---------------------------------------------------------------------------------------------


std::shared_ptr<Connection> Connection::create(asio::ip::tcp::socket socket, Limits limits,
                                               std::shared_ptr<ReceiveBudget> budget,
                                               std::shared_ptr<TlsContext> tls,
                                               const std::string& expected_host) {
  return std::shared_ptr<Connection>(
      new Connection(std::move(socket), limits, std::move(budget), std::move(tls), expected_host));
}

Connection::Connection(asio::ip::tcp::socket socket, Limits limits,
                       std::shared_ptr<ReceiveBudget> budget, std::shared_ptr<TlsContext> tls,
                       const std::string& expected_host)
    : socket_(std::move(socket)), limits_(limits), budget_(std::move(budget)) {
  limits_.validate();
  if (!budget_) budget_ = std::make_shared<ReceiveBudget>(limits_.max_frame_bytes);
  peer_ = describe(socket_);
  set_nodelay(socket_);
  if (tls) {
    tls_ = std::make_unique<Tls>(socket_, std::move(tls));
    const TlsRole role = tls_->context->role();
    if (role == TlsRole::kClient) {
      tls_->host = tls_->context->server_name().empty() ? expected_host : tls_->context->server_name();
      asio::error_code ec;
      asio::ip::make_address(tls_->host, ec);
      if (ec && !tls_->host.empty()) SSL_set_tlsext_host_name(tls_->stream.native_handle(), tls_->host.c_str());
    }
    Tls* state = tls_.get();  // owned by this connection, which outlives its stream
    tls_->stream.set_verify_callback([state, role](bool preverified, asio::ssl::verify_context& ctx) {
      return verify_certificate(preverified, ctx, role, state->host, &state->verify_failure);
    });
  }
}

std::string Connection::local_host() const {
  asio::error_code ec;
  const auto ep = socket_.local_endpoint(ec);
  return ec ? std::string() : ep.address().to_string();
}

bool Connection::ready() const { return !tls_ || tls_->ready; }

std::string Connection::peer_certificate() const {
  if (!tls_ || !tls_->ready) return {};
  X509* cert = SSL_get1_peer_certificate(tls_->stream.native_handle());
  if (!cert) return {};
  std::string subject = certificate_subject(cert);
  X509_free(cert);
  return subject;
}

Connection::~Connection() {
  asio::error_code ec;
  socket_.close(ec);
}

void Connection::start(FrameHandler on_frame, CloseHandler on_close) {
  on_frame_ = std::move(on_frame);
  on_close_ = std::move(on_close);
  if (!tls_) return read_header();
  writing_ = true;  // frames sent before the handshake completes wait in the outbox
  const auto type = tls_->context->role() == TlsRole::kServer ? asio::ssl::stream_base::server
                                                               : asio::ssl::stream_base::client;
  tls_->stream.async_handshake(type, [self = shared_from_this()](const asio::error_code& ec) {
    self->on_handshake(ec);
  });
}

void Connection::on_handshake(const asio::error_code& ec) {
  if (!open_ || closing_) return;
  if (ec) {
    if (ec == asio::error::operation_aborted) return;
    return close(Error(ErrorKind::kFailed,
                       describe_tls_error(ec, tls_->context->role(), peer_, tls_->verify_failure)));
  }
  tls_->ready = true;
  tls_switch_to_memory_bios();
  writing_ = false;
  if (!outbox_.empty()) write_next();
  read_header();
}

void Connection::read_header() {
  if (closing_) return drain();
  table_.resize(8);
  read_pending_ = true;
  auto on_read = [self = shared_from_this()](const asio::error_code& ec, size_t n) {
                     self->read_pending_ = false;
                     self->bytes_received_ += n;
                     if (self->closing_) return self->drain();
                     if (ec) return self->on_read_error(ec, n, 8);
                     uint64_t table_bytes = 0;
                     try {
                       table_bytes = frame_table_bytes(self->table_.data(), self->limits_);
                     } catch (const Error& e) {
                       const auto* b = self->table_.data();
                       if (!self->tls_ && b[0] == std::byte{0x16} && b[1] == std::byte{0x03}) {
                         // A TLS record header (handshake, version 3.x) where a frame should be.
                         return self->protocol_error(Error(
                             ErrorKind::kFailed,
                             "the peer started a TLS handshake, but this side does not speak TLS: "
                             "start the coordinator with --tls-cert and --tls-key, or connect "
                             "without --tls-ca"));
                       }
                       return self->protocol_error(e);
                     }
                     self->read_table(table_bytes);
                   };
  read_exact(table_.data(), 8, std::move(on_read));
}

void Connection::read_table(uint64_t table_bytes) {
  auto parse = [this]() {
    try {
      read_body(parse_frame_header(table_.data(), table_.size(), limits_));
    } catch (const Error& e) {
      protocol_error(e);
    }
  };
  if (table_bytes == 8) return parse();
  table_.resize(table_bytes);
  read_pending_ = true;
  auto on_read = [self = shared_from_this(), parse, table_bytes](const asio::error_code& ec,
                                                                 size_t n) {
                     self->read_pending_ = false;
                     self->bytes_received_ += n;
                     if (self->closing_) return self->drain();
                     if (ec) return self->on_read_error(ec, 8 + n, table_bytes);
                     parse();
                   };
  read_exact(table_.data() + 8, table_bytes - 8, std::move(on_read));
}

void Connection::read_body(FrameHeader header) {
  const uint64_t body_bytes = header.body_bytes;
  read_pending_ = true;  // waiting for budget counts as reading: nothing else may read
  budget_->acquire(body_bytes, [self = shared_from_this(), header = std::move(header)]() mutable {
    if (!self->open_) {
      self->read_pending_ = false;
      self->budget_->release(header.body_bytes);
      if (self->closing_) self->drain();
      return;
    }
    auto body = allocate_aligned(header.body_bytes);
    auto* dst = body.get();
    const uint64_t n = header.body_bytes;
    // For a large body, wake up only when kLowWater bytes are waiting instead of every ~64 KiB
    // segment: ~16x fewer wake-ups and read calls. The mark drops back to 1 byte before the
    // last kLowWater bytes (else the tail would never wake us) and after the body.
    // (Not under TLS: the SSL stream reads its own small records whatever the mark.)
    const bool large = n >= 4 * kLowWater && !self->tls_;
    if (large) set_low_water(self->socket_, kLowWater);
    auto until_done = [sock = &self->socket_, n, lowered = !large](const asio::error_code& ec,
                                                                   size_t done) mutable -> size_t {
      if (ec || done >= n) return 0;
      if (!lowered && n - done <= kLowWater) {
        set_low_water(*sock, 1);
        lowered = true;
      }
      return n - done;
    };
    auto on_read = [self, header = std::move(header), body = std::move(body), large](
                       const asio::error_code& ec, size_t got) mutable {
          if (large) set_low_water(self->socket_, 1);
          self->read_pending_ = false;
          self->bytes_received_ += got;
          const uint64_t held = header.body_bytes;
          if (ec || self->closing_) {
            self->budget_->release(held);
            if (self->closing_) return self->drain();
            return self->on_read_error(ec, header.table_bytes + got, header.total_bytes());
          }
          if (self->dumper_) {
            self->dumper_->dump(false, self->peer_,
                                {{self->table_.data(), self->table_.size()}, {body.get(), held}});
          }
          try {
            self->on_frame_(InFrame(std::move(header), std::move(body)));
          } catch (const std::exception& e) {
            self->budget_->release(held);
            return self->close(Error(ErrorKind::kFailed,
                                     fmt::format("handler for a frame from {} failed: {}",
                                                 self->peer_, e.what())));
          }
          self->budget_->release(held);
          if (self->open_ || self->closing_) self->read_header();
        };
    if (self->tls_) {
      self->read_exact(dst, n, std::move(on_read));
    } else {
      asio::async_read(self->socket_, asio::buffer(dst, n), until_done, std::move(on_read));
    }
  });
}

void Connection::on_read_error(const asio::error_code& ec, uint64_t got, uint64_t wanted) {
  if (ec == asio::error::operation_aborted || !open_) return;
  if (tls_ && ec.category() == asio::error::get_ssl_category() && ec != asio::ssl::error::stream_truncated) {
    // An alert from the peer (e.g. TLS 1.3 servers refuse a client certificate after the
    // client's side of the handshake is done) or a corrupt record.
    return close(Error(ErrorKind::kFailed, describe_tls_error(ec, tls_->context->role(), peer_, tls_->verify_failure,
                                                              /*in_handshake=*/bytes_received_ == 0)));
  }
  if (ec == asio::error::eof || ec == asio::error::connection_reset ||
      ec == asio::ssl::error::stream_truncated) {
    if (got == 0 && wanted == 8) {
      return close(Error(ErrorKind::kDisconnected,
                         fmt::format("{} closed the connection", peer_)));
    }
    return close(Error(ErrorKind::kDisconnected,
                       fmt::format("{} closed the connection mid-frame (truncated frame: {} of "
                                   "{} bytes received)",
                                   peer_, got, wanted)));
  }
  close(Error(ErrorKind::kDisconnected, fmt::format("reading from {} failed: {}", peer_,
                                                    ec.message())));
}

void Connection::protocol_error(const Error& error) { send_error_and_close(error); }

void Connection::send(OutFrame frame, std::function<void()> on_written) {
  if (!open_) return;  // the owner learns of the close through the CloseHandler
  outbox_.push_back({std::move(frame), std::move(on_written)});
  if (!writing_) write_next();
}

void Connection::write_next() {
  if (outbox_.empty()) {
    writing_ = false;
    return;
  }
  writing_ = true;
  const auto& pieces = outbox_.front().frame.pieces();
  if (dumper_) dumper_->dump(true, peer_, pieces);
  auto on_written = [self = shared_from_this()](const asio::error_code& ec, size_t n) {
                      self->bytes_sent_ += n;
                      if (ec) {
                        self->writing_ = false;
                        self->outbox_.clear();
                        if (ec != asio::error::operation_aborted) {
                          self->close(Error(ErrorKind::kDisconnected,
                                            fmt::format("writing to {} failed: {}", self->peer_,
                                                        ec.message())));
                        }
                        return;
                      }
                      if (self->outbox_.empty()) return;  // closed meanwhile
                      auto done = std::move(self->outbox_.front().on_written);
                      self->outbox_.pop_front();
                      if (!self->open_ && !self->closing_) {
                        self->outbox_.clear();
                        self->writing_ = false;
                        return;
                      }
                      if (done) done();
                      self->write_next();
                    };
  write_all(pieces, std::move(on_written));
}

void Connection::send_error_and_close(const Error& error) {
  if (!open_) return;
  if (tls_ && !tls_->ready) return close(error);  // nothing can be said before the handshake
  Envelope env;
  env.kind = std::string(kErrorKind);
  env.error = WireError{error.kind(), error.what()};
  OutFrame frame = encode(env, limits_);
  outbox_.push_back({std::move(frame), [self = shared_from_this()]() {
                       // Half-close, then read until the peer closes (or 2 s pass) so that
                       // unread bytes do not turn our close into a reset that drops the error.
                       asio::error_code ec;
                       self->socket_.shutdown(asio::ip::tcp::socket::shutdown_send, ec);
                       self->drain_timer_.emplace(self->socket_.get_executor());
                       self->drain_timer_->expires_after(std::chrono::seconds(2));
                       self->drain_timer_->async_wait([self](const asio::error_code& tec) {
                         if (!tec) {
                           asio::error_code cec;
                           self->socket_.close(cec);
                         }
                       });
                       if (!self->read_pending_) self->drain();
                     }});
  closing_ = true;
  notify_closed(error);
  if (!writing_) write_next();
}

void Connection::drain() {
  if (!socket_.is_open()) return;
  drain_buffer_.resize(64 * 1024);
  read_pending_ = true;
  socket_.async_read_some(asio::buffer(drain_buffer_),
                          [self = shared_from_this()](const asio::error_code& ec, size_t n) {
                            self->read_pending_ = false;
                            self->bytes_received_ += n;
                            if (!ec) return self->drain();
                            asio::error_code cec;
                            if (self->drain_timer_) self->drain_timer_->cancel();
                            self->socket_.close(cec);
                          });
}

void Connection::close(const Error& reason) {
  notify_closed(reason);
  closing_ = false;
  asio::error_code ec;
  socket_.shutdown(asio::ip::tcp::socket::shutdown_both, ec);
  socket_.close(ec);
  // A write in flight still points into the front frame: keep it until its handler runs, but
  // drop every completion callback, whose owners may be gone by then.
  for (auto& o : outbox_) o.on_written = nullptr;
  while (outbox_.size() > (writing_ ? 1u : 0u)) outbox_.pop_back();
}

void Connection::notify_closed(const Error& reason) {
  if (!open_) return;
  open_ = false;
  if (on_close_) {
    asio::post(socket_.get_executor(),
               [self = shared_from_this(), reason]() { self->on_close_(reason); });
  }
}

}  // namespace fedra::transport::tcp
