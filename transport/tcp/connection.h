// Framed messages over Asio TCP.
//
// A Connection reads frames continuously and hands each one, whole, to its FrameHandler; it
// writes frames queued by send() in order with one gathered write each (the OutFrame's pieces
// go straight from tensor memory to the socket). A frame body is read into one aligned buffer
// that the decoded tensors later share, so bytes are copied once, kernel to user.
//
// Threading: single-threaded by design. Every method, and every handler, runs on the thread
// that runs the io_context; there are no locks and no thread hand-offs on the message path (a
// cross-core wake-up costs ~75 us on the machines this was measured on). The owner drives the
// io_context from its own loop (Cohort::gather, BlockingChannel::receive).
//
// Memory: frame bodies being received count against a ReceiveBudget shared by all connections
// of a process. A body is read only when it fits in the budget (or nothing else is in flight),
// so a coordinator that consumes each frame in its handler holds O(budget) bytes of incoming
// frames, however many workers send at once; the rest wait in kernel buffers.
//
// TLS: with a TlsContext the connection runs over an SSL stream on the same socket. start()
// first runs the handshake (server or client, per the context); frames sent meanwhile wait, and
// a failed handshake closes the connection with a fedra::Error that says why (tls.h).
//
// Errors: a malformed or over-limit frame is answered with an "error" envelope naming the
// problem, then the connection closes. The CloseHandler runs exactly once, with the reason.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <asio.hpp>

#include "transport/channel.h"
#include "transport/codec.h"
#include "transport/endpoint.h"

namespace fedra::transport::tcp {

using transport::Endpoint;
using transport::parse_endpoint;

class ReceiveBudget {
 public:
  explicit ReceiveBudget(uint64_t bytes) : capacity_(bytes) {}
  // Runs `start` now if `bytes` fit or nothing is in flight; otherwise when enough is released.
  void acquire(uint64_t bytes, std::function<void()> start);
  void release(uint64_t bytes);
  uint64_t in_use() const { return in_use_; }
  uint64_t peak() const { return peak_; }

 private:
  uint64_t capacity_;
  uint64_t in_use_ = 0;
  uint64_t peak_ = 0;
  std::deque<std::pair<uint64_t, std::function<void()>>> waiting_;
};

// Writes every frame it is shown to DIR/NNNNNN-{sent,recv}-PEER.bin, byte for byte as on the
// wire, so that `capnp decode transport/schema/fedra.capnp Envelope < FILE` reads it
// (--dump-frames). Shared by the connections of one process; single-threaded like them.
class FrameDumper {
 public:
  explicit FrameDumper(std::string dir);
  void dump(bool sent, const std::string& peer, const std::vector<ConstBytes>& pieces);

 private:
  std::string dir_;
  uint64_t count_ = 0;
};

class TlsContext;

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  using FrameHandler = std::function<void(InFrame)>;
  using CloseHandler = std::function<void(const Error&)>;

  // Shows every frame sent and received to `dumper` (nullptr: none).
  void set_dumper(std::shared_ptr<FrameDumper> dumper) { dumper_ = std::move(dumper); }

  // With `tls`, the connection speaks TLS in the context's role; a client checks that the
  // server's certificate carries `expected_host` (the context's server_name wins if set).
  static std::shared_ptr<Connection> create(asio::ip::tcp::socket socket, Limits limits,
                                            std::shared_ptr<ReceiveBudget> budget = nullptr,
                                            std::shared_ptr<TlsContext> tls = nullptr,
                                            const std::string& expected_host = {});
  ~Connection();

  // Starts the read loop. Handlers are called on the io_context thread.
  void start(FrameHandler on_frame, CloseHandler on_close);
  // Replaces the handlers of a started connection (a link handed from its setup to its user).
  void set_handlers(FrameHandler on_frame, CloseHandler on_close) {
    on_frame_ = std::move(on_frame);
    on_close_ = std::move(on_close);
  }
  // Queues a frame; `on_written` runs once it is fully handed to the kernel.
  void send(OutFrame frame, std::function<void()> on_written = {});
  // Sends an error envelope, then closes gracefully (the peer can still read it).
  void send_error_and_close(const Error& error);
  // Closes now; the CloseHandler runs (posted) with `reason`.
  void close(const Error& reason);

  bool is_open() const { return open_; }
  // False while a TLS handshake is in progress; true for plain TCP.
  bool ready() const;
  bool uses_tls() const { return tls_ != nullptr; }
  // The subject of the certificate the peer presented ("" without TLS or without one).
  std::string peer_certificate() const;
  const std::string& peer() const { return peer_; }
  // The local address of the socket ("" if unknown): where this side is reached from the peer.
  std::string local_host() const;
  const Limits& limits() const { return limits_; }
  uint64_t bytes_sent() const { return bytes_sent_; }
  uint64_t bytes_received() const { return bytes_received_; }

 private:
  struct Tls;
  Connection(asio::ip::tcp::socket socket, Limits limits, std::shared_ptr<ReceiveBudget> budget,
             std::shared_ptr<TlsContext> tls, const std::string& expected_host);
  using IoHandler = std::function<void(const asio::error_code&, size_t)>;
  // Reads exactly n bytes of the byte stream (plaintext under TLS) into dst.
  void read_exact(std::byte* dst, size_t n, IoHandler handler);
  // Writes the pieces, in order, whole.
  void write_all(const std::vector<ConstBytes>& pieces, IoHandler handler);
  // TLS after the handshake: records are made and opened here, between memory BIOs and the
  // socket, so that a frame goes out as few large socket writes of full 16 KiB records and comes
  // in as large socket reads (Asio's SSL stream moves one record per system call).
  void tls_switch_to_memory_bios();
  void tls_read_more(const std::shared_ptr<struct TlsRead>& r);
  void tls_write_more(const std::shared_ptr<struct TlsWrite>& w);
  void tls_flush(const std::shared_ptr<struct TlsWrite>& w, size_t window);
  void on_handshake(const asio::error_code& ec);
  void read_header();
  void read_table(uint64_t table_bytes);
  void read_body(FrameHeader header);
  void on_read_error(const asio::error_code& ec, uint64_t got, uint64_t wanted);
  void protocol_error(const Error& error);
  void write_next();
  void drain();
  void notify_closed(const Error& reason);

  struct Outgoing {
    OutFrame frame;
    std::function<void()> on_written;
  };

  asio::ip::tcp::socket socket_;
  std::unique_ptr<Tls> tls_;
  Limits limits_;
  std::shared_ptr<ReceiveBudget> budget_;
  std::shared_ptr<FrameDumper> dumper_;
  std::string peer_;
  FrameHandler on_frame_;
  CloseHandler on_close_;
  bool open_ = true;
  bool closing_ = false;   // graceful close in progress: no more frames delivered
  bool read_pending_ = false;  // a read (or a wait for receive budget) is outstanding
  std::vector<std::byte> table_;
  std::vector<std::byte> drain_buffer_;
  std::deque<Outgoing> outbox_;
  bool writing_ = false;
  std::optional<asio::steady_timer> drain_timer_;
  uint64_t bytes_sent_ = 0;
  uint64_t bytes_received_ = 0;
};

// Connects with retry and exponential backoff (0.1 s doubling to 2 s) until `timeout` passes.
// Blocks the calling thread; the socket has TCP_NODELAY set. Throws Error(kDisconnected)
// naming the endpoint, the last failure and `hint` (what to check) when the deadline passes.
asio::ip::tcp::socket connect_with_retry(asio::io_context& io, const Endpoint& endpoint,
                                         std::chrono::milliseconds timeout,
                                         const std::string& hint = "is the coordinator running and listening there?");

// Accepts connections and hands each, with TCP_NODELAY set, to `on_accept`.
class Listener {
 public:
  using AcceptHandler = std::function<void(asio::ip::tcp::socket)>;
  Listener(asio::io_context& io, const Endpoint& endpoint, AcceptHandler on_accept);
  Endpoint local_endpoint() const;
  void close();

 private:
  void accept_next();
  asio::ip::tcp::acceptor acceptor_;
  AcceptHandler on_accept_;
};

// The TCP Channel (transport/channel.h), with TLS when given a context: workers, tools and tests.
// Owns its io_context and runs it only inside send() and receive(), on the calling thread.
class BlockingChannel : public Channel {
 public:
  // With `tls`, also completes the TLS handshake within `timeout` (throws Error saying why not).
  static std::unique_ptr<BlockingChannel> connect(const Endpoint& endpoint, const Limits& limits,
                                                  std::chrono::milliseconds timeout,
                                                  std::shared_ptr<FrameDumper> dumper = nullptr,
                                                  std::shared_ptr<TlsContext> tls = nullptr);
  ~BlockingChannel() override;

  void send(const Envelope& envelope) override;
  Envelope receive(std::optional<std::chrono::milliseconds> timeout = std::nullopt) override;
  std::optional<Envelope> poll_receive() override;
  void close() override;

  const std::string& peer() const override { return conn_->peer(); }
  std::string local_host() const override { return conn_->local_host(); }
  uint64_t bytes_sent() const { return conn_->bytes_sent(); }
  uint64_t bytes_received() const { return conn_->bytes_received(); }

 private:
  BlockingChannel() = default;
  asio::io_context io_;
  std::shared_ptr<Connection> conn_;
  std::deque<InFrame> inbox_;
  std::optional<Error> closed_;
};

}  // namespace fedra::transport::tcp
