// TLS for the coordinator-worker link (Asio's SSL streams over OpenSSL).
//
// The coordinator is the TLS server: it presents --tls-cert/--tls-key, and with --tls-ca it asks
// every worker for a certificate signed by that CA (mutual TLS) and refuses the handshake
// otherwise. A worker is the TLS client: --tls-ca turns TLS on and is the CA it checks the
// coordinator's certificate against, including the name it connected to (IP or DNS
// subjectAltName); with --tls-cert/--tls-key it presents its own. TLS 1.2 is the minimum.
//
// Failed handshakes become fedra::Error with what was wrong in words a user can act on
// ("the worker's certificate 'CN=x' failed verification: unable to get local issuer
// certificate; is it signed by the CA in --tls-ca?"), never a bare OpenSSL code.
//
// make_test_pki writes a throwaway CA and certificates (`fedra certs`, docs/security.md).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <asio.hpp>
#include <asio/ssl.hpp>

namespace fedra::transport::tcp {

struct TlsConfig {
  std::string cert_file;    // PEM certificate (chain) this side presents
  std::string key_file;     // its PEM private key
  std::string ca_file;      // PEM CA certificate(s) the peer's certificate must chain to
  std::string server_name;  // client: the name the server's certificate must carry ("": the host)
};

enum class TlsRole { kServer, kClient };

class TlsContext {
 public:
  // Loads and checks the files; throws Error naming the file and what is wrong with it.
  // A server needs cert and key; a client needs the CA.
  TlsContext(TlsRole role, const TlsConfig& config);

  asio::ssl::context& native() { return ctx_; }
  TlsRole role() const { return role_; }
  // Server: workers must present a certificate (mutual TLS). Client: always true.
  bool verifies_peer() const { return verify_peer_; }
  const std::string& server_name() const { return config_.server_name; }
  // One line for logs, e.g. "TLS, mutual (workers need a certificate signed by certs/ca.pem)".
  std::string describe() const;

 private:
  TlsRole role_;
  TlsConfig config_;
  bool verify_peer_ = false;
  asio::ssl::context ctx_;
};

// Words for a failed TLS handshake or read: `verify_failure` is what the verify callback recorded
// (empty if none), `peer` the address. Adds a hint when the peer does not speak TLS at all.
// `in_handshake` is false for an error on an established session (a corrupt record). A TLS 1.3
// client learns that its certificate was refused only at its first read: that still counts as
// the handshake, since no frame has arrived yet.
std::string describe_tls_error(const asio::error_code& ec, TlsRole role, const std::string& peer,
                               const std::string& verify_failure, bool in_handshake = true);

// Checks a certificate in the chain as it is verified, recording why it failed in *failure
// (client: also that the leaf carries `host`). For ssl::stream::set_verify_callback.
bool verify_certificate(bool preverified, asio::ssl::verify_context& ctx, TlsRole role,
                        const std::string& host, std::string* failure);

// "CN=worker-0, O=Fedra" for a certificate (OpenSSL's one-line form).
std::string certificate_subject(X509* cert);

// True for 127.0.0.0/8, ::1 and "localhost": listening there needs no TLS.
bool is_loopback_host(const std::string& host);

struct PkiRequest {
  std::string dir;                  // created if missing
  std::vector<std::string> hosts;   // the coordinator certificate's names (IPs and DNS names)
  std::vector<std::string> workers; // one client certificate each, CN = name
  int days = 30;
};

// Writes DIR/ca.pem + ca.key (made unless both exist, then reused to sign),
// DIR/coordinator.pem + .key, and DIR/NAME.pem + .key per worker. Keys are mode 0600. An existing
// leaf certificate is never overwritten: that is an error naming it. Returns the files written.
std::vector<std::string> make_test_pki(const PkiRequest& request);

}  // namespace fedra::transport::tcp
