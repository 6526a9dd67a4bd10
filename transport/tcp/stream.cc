// A Connection's byte stream (transport/tcp/connection.h): plain TCP, or TLS records over memory
// BIOs, made and opened here so that a frame goes out as few large socket writes of full 16 KiB
// records and comes in as large socket reads.
#include <algorithm>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "transport/tcp/internal.h"

namespace fedra::transport::tcp {

namespace {
constexpr size_t kTlsRecord = 16 * 1024;    // the largest TLS plaintext record
constexpr size_t kTlsWindow = 512 * 1024;   // plaintext encrypted per socket write
constexpr size_t kTlsPairBytes = 1024 * 1024;  // each direction of the BIO pair
}  // namespace

struct TlsRead {
  std::byte* dst;
  size_t n;
  size_t done = 0;
  std::function<void(const asio::error_code&, size_t)> handler;
};

struct TlsWrite {
  std::vector<ConstBytes> pieces;
  size_t piece = 0, offset = 0;
  size_t done = 0;  // plaintext bytes written
  std::function<void(const asio::error_code&, size_t)> handler;
};

void Connection::tls_switch_to_memory_bios() {
  SSL* ssl = tls_->stream.native_handle();
  BIO* inner = nullptr;
  BIO* net = nullptr;
  BIO_new_bio_pair(&inner, kTlsPairBytes, &net, kTlsPairBytes);
  // Ciphertext the SSL stream already took from the socket beyond the handshake (the peer's
  // first frame may follow its Finished in the same segment) moves along.
  BIO* old = SSL_get_rbio(ssl);
  char buf[4096];
  for (int n; (n = BIO_read(old, buf, sizeof(buf))) > 0;) BIO_write(net, buf, n);
  SSL_set_bio(ssl, inner, inner);
  tls_->net = net;
}

void Connection::read_exact(std::byte* dst, size_t n, IoHandler handler) {
  if (!tls_) return asio::async_read(socket_, asio::buffer(dst, n), std::move(handler));
  tls_read_more(std::make_shared<TlsRead>(TlsRead{dst, n, 0, std::move(handler)}));
}

void Connection::tls_read_more(const std::shared_ptr<TlsRead>& r) {
  SSL* ssl = tls_->stream.native_handle();
  while (r->done < r->n) {
    ERR_clear_error();
    const int want = static_cast<int>(std::min<size_t>(r->n - r->done, 1u << 30));
    const int got = SSL_read(ssl, r->dst + r->done, want);
    if (got > 0) {
      r->done += static_cast<size_t>(got);
      continue;
    }
    const int err = SSL_get_error(ssl, got);
    if (err == SSL_ERROR_WANT_READ) {
      // Read from the socket straight into the pair's free space.
      char* space = nullptr;
      const int room = BIO_nwrite0(tls_->net, &space);
      if (room <= 0) {
        const asio::error_code full = asio::error::no_buffer_space;
        return asio::post(socket_.get_executor(), [r, full] { r->handler(full, r->done); });
      }
      socket_.async_read_some(asio::buffer(space, static_cast<size_t>(room)),
                              [self = shared_from_this(), r](const asio::error_code& ec, size_t bytes) {
                                if (ec) return r->handler(ec, r->done);
                                if (!self->tls_ || !self->open_) return r->handler(asio::error::operation_aborted, r->done);
                                char* at = nullptr;
                                BIO_nwrite(self->tls_->net, &at, static_cast<int>(bytes));
                                self->tls_read_more(r);
                              });
      return;
    }
    asio::error_code ec = err == SSL_ERROR_ZERO_RETURN ? asio::error_code(asio::error::eof)
                                                       : asio::error_code(static_cast<int>(ERR_get_error()),
                                                                          asio::error::get_ssl_category());
    if (err != SSL_ERROR_ZERO_RETURN && !ec) ec = asio::ssl::error::stream_truncated;
    return asio::post(socket_.get_executor(), [r, ec] { r->handler(ec, r->done); });
  }
  // Completed from bytes already decrypted or buffered: posted, so that a burst of small frames
  // does not nest handler in handler.
  asio::post(socket_.get_executor(), [r] { r->handler({}, r->done); });
}

void Connection::write_all(const std::vector<ConstBytes>& pieces, IoHandler handler) {
  if (!tls_) {
    std::vector<asio::const_buffer> buffers;
    buffers.reserve(pieces.size());
    for (const auto& p : pieces) buffers.emplace_back(p.data, p.size);
    return asio::async_write(socket_, buffers, std::move(handler));
  }
  auto w = std::make_shared<TlsWrite>();
  w->pieces = pieces;
  w->handler = std::move(handler);
  tls_write_more(w);
}

void Connection::tls_write_more(const std::shared_ptr<TlsWrite>& w) {
  SSL* ssl = tls_->stream.native_handle();
  auto& staging = tls_->staging;
  staging.clear();
  bool failed = false;
  const auto seal = [&](const std::byte* data, size_t n) {
    // A memory BIO takes everything; SSL_write still returns after each record in Asio's
    // partial-write mode, hence the loop.
    while (n > 0 && !failed) {
      ERR_clear_error();
      const int wrote = SSL_write(ssl, data, static_cast<int>(std::min<size_t>(n, 1u << 30)));
      failed = wrote <= 0;
      if (!failed) {
        data += wrote;
        n -= static_cast<size_t>(wrote);
      }
    }
  };
  // Up to a window of plaintext: small pieces (the segment table, message roots, small tensors)
  // gathered into full records, large ones sealed straight from the tensor's memory.
  size_t window = 0;
  while (window < kTlsWindow && w->piece < w->pieces.size()) {
    const ConstBytes& p = w->pieces[w->piece];
    const size_t take = std::min(p.size - w->offset, kTlsWindow - window);
    if (take >= kTlsRecord) {
      seal(staging.data(), staging.size());
      staging.clear();
      seal(p.data + w->offset, take);
    } else {
      staging.insert(staging.end(), p.data + w->offset, p.data + w->offset + take);
      if (staging.size() >= kTlsRecord) {
        seal(staging.data(), staging.size());
        staging.clear();
      }
    }
    window += take;
    w->offset += take;
    if (w->offset == p.size) {
      ++w->piece;
      w->offset = 0;
    }
  }
  seal(staging.data(), staging.size());
  staging.clear();
  if (failed) {
    const asio::error_code ec(static_cast<int>(ERR_get_error()), asio::error::get_ssl_category());
    return asio::post(socket_.get_executor(), [w, ec] { w->handler(ec ? ec : asio::error::broken_pipe, w->done); });
  }
  if (window == 0) return asio::post(socket_.get_executor(), [w] { w->handler({}, w->done); });
  tls_flush(w, window);
}

// Writes the window's ciphertext from the pair to the socket (in two parts when it wraps round
// the pair's ring buffer), then seals the next window.
void Connection::tls_flush(const std::shared_ptr<TlsWrite>& w, size_t window) {
  char* data = nullptr;
  const int n = BIO_nread0(tls_->net, &data);
  if (n <= 0) {
    w->done += window;
    if (w->piece == w->pieces.size()) return w->handler({}, w->done);
    return tls_write_more(w);
  }
  asio::async_write(socket_, asio::buffer(data, static_cast<size_t>(n)),
                    [self = shared_from_this(), w, window, n](const asio::error_code& ec, size_t) {
                      if (ec) return w->handler(ec, w->done);
                      if (!self->tls_ || !self->open_) return w->handler(asio::error::operation_aborted, w->done);
                      char* at = nullptr;
                      BIO_nread(self->tls_->net, &at, n);
                      self->tls_flush(w, window);
                    });
}

}  // namespace fedra::transport::tcp
