// What the TCP transport's own files share (connection.cc, stream.cc, channel.cc); not an interface.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <asio.hpp>
#include <asio/ssl.hpp>
#include <openssl/bio.h>

#include "transport/tcp/connection.h"
#include "transport/tcp/tls.h"

namespace fedra::transport::tcp {

// A connection's TLS state (Connection::Tls is declared in connection.h).
struct Connection::Tls {
  Tls(asio::ip::tcp::socket& socket, std::shared_ptr<TlsContext> c)
      : context(std::move(c)), stream(socket, context->native()) {}
  std::shared_ptr<TlsContext> context;
  asio::ssl::stream<asio::ip::tcp::socket&> stream;
  std::string host;            // client: the name the server's certificate must carry
  std::string verify_failure;  // why the peer's certificate was refused, if it was
  bool ready = false;          // handshake done
  // After the handshake: the SSL object's records go through a BIO pair whose network side is
  // ours: ciphertext is read from the socket straight into the pair and written to the socket
  // straight from it (BIO_nwrite0 / BIO_nread0), with no copy between.
  BIO* net = nullptr;
  std::vector<std::byte> staging;  // small pieces gathered into full records
  ~Tls() {
    if (net) BIO_free(net);
  }
};

// Nagle off: frames go out as they are written.
void set_nodelay(asio::ip::tcp::socket& socket);

}  // namespace fedra::transport::tcp
