#include "transport/tcp/tls.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "transport/error.h"

namespace fedra::transport::tcp {

namespace {

// The first queued OpenSSL error, in words ("no such file", "key values mismatch").
std::string openssl_reason() {
  const unsigned long code = ERR_get_error();
  ERR_clear_error();
  if (code == 0) return "unknown OpenSSL error";
  const char* reason = ERR_reason_error_string(code);
  return reason ? reason : fmt::format("OpenSSL error {:#x}", code);
}

void require_file(const std::string& path, const char* option) {
  FEDRA_REQUIRE(!path.empty(), "{} is required here", option);
  std::error_code ec;
  FEDRA_REQUIRE(std::filesystem::is_regular_file(path, ec), "{} '{}': no such file{}", option, path,
                option == std::string("--tls-ca") || option == std::string("--tls-cert")
                    ? " (make a test CA and certificates with `fedra certs --out DIR`)"
                    : "");
}

}  // namespace

TlsContext::TlsContext(TlsRole role, const TlsConfig& config)
    : role_(role),
      config_(config),
      ctx_(role == TlsRole::kServer ? asio::ssl::context::tls_server : asio::ssl::context::tls_client) {
  SSL_CTX* native = ctx_.native_handle();
  SSL_CTX_set_min_proto_version(native, TLS1_2_VERSION);
  ctx_.set_options(asio::ssl::context::default_workarounds | asio::ssl::context::single_dh_use);
  // A server always presents a certificate; a client only for mutual TLS, and it always needs
  // the CA to check the server by. Each file is checked once, where it is loaded.
  if (role == TlsRole::kClient) {
    FEDRA_REQUIRE(config.cert_file.empty() == config.key_file.empty(),
                  "give --tls-cert and --tls-key together (the worker's certificate and its key)");
  }
  if (role == TlsRole::kServer || !config.cert_file.empty()) {
    require_file(config.cert_file, "--tls-cert");
    require_file(config.key_file, "--tls-key");
    FEDRA_REQUIRE(SSL_CTX_use_certificate_chain_file(native, config.cert_file.c_str()) == 1,
                  "--tls-cert '{}' is not a PEM certificate: {}", config.cert_file, openssl_reason());
    if (SSL_CTX_use_PrivateKey_file(native, config.key_file.c_str(), SSL_FILETYPE_PEM) != 1) {
      const bool mismatch = ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH;
      FEDRA_FAIL("--tls-key '{}' {}: {}", config.key_file,
                 mismatch ? fmt::format("does not belong to --tls-cert '{}'", config.cert_file)
                          : std::string("is not a PEM private key"),
                 openssl_reason());
    }
    FEDRA_REQUIRE(SSL_CTX_check_private_key(native) == 1,
                  "--tls-key '{}' does not belong to --tls-cert '{}': {}", config.key_file,
                  config.cert_file, openssl_reason());
  }
  if (role == TlsRole::kClient || !config.ca_file.empty()) {
    require_file(config.ca_file, "--tls-ca");
    FEDRA_REQUIRE(SSL_CTX_load_verify_locations(native, config.ca_file.c_str(), nullptr) == 1,
                  "--tls-ca '{}' holds no PEM CA certificate: {}", config.ca_file, openssl_reason());
    verify_peer_ = true;
    if (role == TlsRole::kServer) {
      ctx_.set_verify_mode(asio::ssl::verify_peer | asio::ssl::verify_fail_if_no_peer_cert);
      // The CA names go into the certificate request, so a worker's TLS stack knows what to send.
      STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(config.ca_file.c_str());
      if (names) SSL_CTX_set_client_CA_list(native, names);
    } else {
      ctx_.set_verify_mode(asio::ssl::verify_peer);
    }
  }
  ERR_clear_error();
}

std::string TlsContext::describe() const {
  if (role_ == TlsRole::kServer) {
    return verify_peer_ ? fmt::format("TLS, mutual: workers need a certificate signed by {}", config_.ca_file)
                        : std::string("TLS, server certificate only (no --tls-ca: workers are not asked for one)");
  }
  return fmt::format("TLS, coordinator checked against {}{}", config_.ca_file,
                     config_.cert_file.empty() ? "" : fmt::format(", presenting {}", config_.cert_file));
}

std::string certificate_subject(X509* cert) {
  if (!cert) return "(none)";
  BIO* bio = BIO_new(BIO_s_mem());
  X509_NAME_print_ex(bio, X509_get_subject_name(cert), 0, XN_FLAG_ONELINE & ~ASN1_STRFLGS_ESC_MSB);
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio, &data);
  std::string out(data, static_cast<size_t>(n));
  BIO_free(bio);
  return out;
}

namespace {

// The names a certificate is valid for, for an error message: "IP:127.0.0.1, DNS:localhost".
std::string certificate_names(X509* cert) {
  std::vector<std::string> out;
  auto* names = static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  if (names) {
    for (int i = 0; i < sk_GENERAL_NAME_num(names); ++i) {
      const GENERAL_NAME* n = sk_GENERAL_NAME_value(names, i);
      if (n->type == GEN_DNS) {
        const auto* s = n->d.dNSName;
        out.push_back("DNS:" + std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                                           static_cast<size_t>(ASN1_STRING_length(s))));
      } else if (n->type == GEN_IPADD) {
        const auto* s = n->d.iPAddress;
        const unsigned char* p = ASN1_STRING_get0_data(s);
        if (ASN1_STRING_length(s) == 4) {
          out.push_back(fmt::format("IP:{}.{}.{}.{}", p[0], p[1], p[2], p[3]));
        } else {
          out.push_back("IP:(IPv6)");
        }
      }
    }
    GENERAL_NAMES_free(names);
  }
  if (out.empty()) return "none";
  return fmt::format("{}", fmt::join(out, ", "));
}

}  // namespace

bool verify_certificate(bool preverified, asio::ssl::verify_context& ctx, TlsRole role,
                        const std::string& host, std::string* failure) {
  X509_STORE_CTX* store = ctx.native_handle();
  X509* cert = X509_STORE_CTX_get_current_cert(store);
  const char* whose = role == TlsRole::kServer ? "the worker's" : "the coordinator's";
  if (!preverified) {
    if (failure->empty()) {
      const int err = X509_STORE_CTX_get_error(store);
      const std::string what = X509_STORE_CTX_get_error_depth(store) == 0
                                   ? fmt::format("{} certificate '{}'", whose, certificate_subject(cert))
                                   : fmt::format("the CA certificate '{}' in {} chain", certificate_subject(cert),
                                                 role == TlsRole::kServer ? "the worker's" : "the coordinator's");
      *failure = fmt::format("{} failed verification: {}; is {} certificate signed by the CA in --tls-ca{}?",
                             what, X509_verify_cert_error_string(err), whose,
                             err == X509_V_ERR_CERT_HAS_EXPIRED ? ", and still valid" : "");
    }
    return false;
  }
  if (role == TlsRole::kClient && X509_STORE_CTX_get_error_depth(store) == 0 && !host.empty()) {
    asio::error_code ec;
    asio::ip::make_address(host, ec);
    const bool ok = !ec ? X509_check_ip_asc(cert, host.c_str(), 0) == 1
                        : X509_check_host(cert, host.c_str(), host.size(), 0, nullptr) == 1;
    if (!ok) {
      X509_STORE_CTX_set_error(store, X509_V_ERR_HOSTNAME_MISMATCH);  // the alert says "bad certificate"
      *failure = fmt::format("the coordinator's certificate '{}' is not valid for '{}' (it names {}); "
                             "connect by one of those names, give --tls-server-name, or make the "
                             "certificate with `fedra certs --hosts {}`",
                             certificate_subject(cert), host, certificate_names(cert), host);
      return false;
    }
  }
  return true;
}

std::string describe_tls_error(const asio::error_code& ec, TlsRole role, const std::string& peer,
                               const std::string& verify_failure, bool in_handshake) {
  if (!verify_failure.empty()) return fmt::format("TLS handshake with {} failed: {}", peer, verify_failure);
  std::string reason = ec.message();
  std::string hint;
  if (ec.category() == asio::error::get_ssl_category()) {
    const int r = ERR_GET_REASON(static_cast<unsigned long>(ec.value()));
    if (r == SSL_R_WRONG_VERSION_NUMBER || r == SSL_R_PACKET_LENGTH_TOO_LONG || r == SSL_R_HTTP_REQUEST ||
        r == SSL_R_RECORD_LENGTH_MISMATCH || r == SSL_R_UNEXPECTED_RECORD) {
      hint = role == TlsRole::kServer
                 ? "; the peer does not speak TLS: give the worker --tls-ca (and --tls-cert/--tls-key "
                   "for mutual TLS)"
                 : "; the coordinator does not speak TLS: start it with --tls-cert and --tls-key";
    } else if (r == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE) {
      hint = "; this coordinator requires a worker certificate (mutual TLS): give the worker "
             "--tls-cert and --tls-key signed by the coordinator's --tls-ca";
    } else if (r == SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED) {
      hint = "; the coordinator requires a worker certificate: give --tls-cert and --tls-key";
    } else if (r >= SSL_AD_REASON_OFFSET) {
      hint = role == TlsRole::kClient ? "; the coordinator refused this connection (see its log)"
                                      : "; the worker refused this connection (see its log)";
    }
  } else if (ec == asio::error::eof || ec == asio::error::connection_reset) {
    reason = "the peer closed the connection";
    hint = role == TlsRole::kClient
               ? " (is the coordinator speaking TLS, and does it accept this worker's certificate?)"
               : "";
  }
  if (!in_handshake) return fmt::format("TLS error on the connection with {}: {}{}", peer, reason, hint);
  return fmt::format("TLS handshake with {} failed: {}{}", peer, reason, hint);
}

bool is_loopback_host(const std::string& host) {
  if (host == "localhost") return true;
  asio::error_code ec;
  const auto address = asio::ip::make_address(host, ec);
  return !ec && address.is_loopback();
}

// ---------------------------------------------------------------------------------------------
// make_test_pki

namespace {

template <class T, void (*Free)(T*)>
struct Deleter {
  void operator()(T* p) const { Free(p); }
};
using KeyPtr = std::unique_ptr<EVP_PKEY, Deleter<EVP_PKEY, EVP_PKEY_free>>;
using CertPtr = std::unique_ptr<X509, Deleter<X509, X509_free>>;

KeyPtr new_key() {
  KeyPtr key(EVP_EC_gen("P-256"));
  FEDRA_REQUIRE(key, "cannot generate an EC P-256 key: {}", openssl_reason());
  return key;
}

void add_extension(X509* cert, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str());
  FEDRA_REQUIRE(ext, "cannot make certificate extension '{}': {}", value, openssl_reason());
  X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
}

enum class Kind { kCa, kServer, kClient };

CertPtr make_certificate(Kind kind, const std::string& cn, EVP_PKEY* key, X509* issuer,
                         EVP_PKEY* issuer_key, const std::vector<std::string>& hosts, int days) {
  CertPtr cert(X509_new());
  X509_set_version(cert.get(), 2);
  unsigned char serial[16];
  FEDRA_REQUIRE(RAND_bytes(serial, sizeof(serial)) == 1, "no randomness for a serial number");
  serial[0] &= 0x7f;  // positive
  BIGNUM* bn = BN_bin2bn(serial, sizeof(serial), nullptr);
  BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert.get()));
  BN_free(bn);
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600);  // tolerate clocks an hour apart
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), static_cast<long>(days) * 86400);
  X509_set_pubkey(cert.get(), key);
  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8, reinterpret_cast<const unsigned char*>("Fedra test PKI"), -1, -1, 0);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509* signer = issuer ? issuer : cert.get();
  X509_set_issuer_name(cert.get(), X509_get_subject_name(signer));
  add_extension(cert.get(), signer, NID_subject_key_identifier, "hash");
  if (issuer) add_extension(cert.get(), signer, NID_authority_key_identifier, "keyid:always");
  switch (kind) {
    case Kind::kCa:
      add_extension(cert.get(), signer, NID_basic_constraints, "critical,CA:TRUE,pathlen:0");
      add_extension(cert.get(), signer, NID_key_usage, "critical,keyCertSign,cRLSign");
      break;
    case Kind::kServer: {
      add_extension(cert.get(), signer, NID_basic_constraints, "critical,CA:FALSE");
      add_extension(cert.get(), signer, NID_key_usage, "critical,digitalSignature");
      add_extension(cert.get(), signer, NID_ext_key_usage, "serverAuth");
      std::vector<std::string> alt;
      for (const auto& h : hosts) {
        asio::error_code ec;
        asio::ip::make_address(h, ec);
        alt.push_back((ec ? "DNS:" : "IP:") + h);
      }
      add_extension(cert.get(), signer, NID_subject_alt_name, fmt::format("{}", fmt::join(alt, ",")));
      break;
    }
    case Kind::kClient:
      add_extension(cert.get(), signer, NID_basic_constraints, "critical,CA:FALSE");
      add_extension(cert.get(), signer, NID_key_usage, "critical,digitalSignature");
      // A worker is also the TLS server of the peer link another worker opens to it
      // (core/net/peer.h), which checks that the certificate carries the worker's name.
      add_extension(cert.get(), signer, NID_ext_key_usage, "clientAuth,serverAuth");
      add_extension(cert.get(), signer, NID_subject_alt_name, "DNS:" + cn);
      break;
  }
  FEDRA_REQUIRE(X509_sign(cert.get(), issuer_key, EVP_sha256()) > 0, "cannot sign the certificate for '{}': {}",
                cn, openssl_reason());
  return cert;
}

// Writes through a temporary file and a rename, so a crash leaves no half-written PEM behind.
template <class WriteFn>
void write_pem(const std::string& path, mode_t mode, WriteFn write) {
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, mode);
  FEDRA_REQUIRE(fd >= 0, "cannot write '{}': {}", tmp, std::strerror(errno));
  ::fchmod(fd, mode);  // a leftover .tmp keeps its old mode through O_CREAT; and the umask applies
  FILE* f = ::fdopen(fd, "w");
  FEDRA_REQUIRE(f, "cannot write '{}': {}", tmp, std::strerror(errno));
  const bool ok = write(f) == 1;
  const bool flushed = std::fflush(f) == 0 && ::fsync(fd) == 0;
  std::fclose(f);
  FEDRA_REQUIRE(ok && flushed, "cannot write '{}' (disk full?)", tmp);
  FEDRA_REQUIRE(std::rename(tmp.c_str(), path.c_str()) == 0, "cannot rename '{}' to '{}': {}", tmp, path,
                std::strerror(errno));
}

void write_pair(const std::string& dir, const std::string& stem, X509* cert, EVP_PKEY* key,
                std::vector<std::string>& written) {
  const std::string key_path = dir + "/" + stem + ".key";
  const std::string cert_path = dir + "/" + stem + ".pem";
  write_pem(key_path, 0600, [key](FILE* f) {
    return PEM_write_PrivateKey(f, key, nullptr, nullptr, 0, nullptr, nullptr);
  });
  write_pem(cert_path, 0644, [cert](FILE* f) { return PEM_write_X509(f, cert); });
  written.push_back(cert_path);
  written.push_back(key_path);
}

bool valid_stem(const std::string& name) {
  if (name.empty() || name == "ca" || name == "coordinator" || name.front() == '.') return false;
  for (char c : name) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.')) return false;
  }
  return true;
}

}  // namespace

std::vector<std::string> make_test_pki(const PkiRequest& request) {
  namespace fs = std::filesystem;
  FEDRA_REQUIRE(request.days >= 1 && request.days <= 3650, "--days must be between 1 and 3650, got {}",
                request.days);
  for (const auto& w : request.workers) {
    FEDRA_REQUIRE(valid_stem(w), "worker name '{}' cannot name a certificate file: use letters, digits, "
                  "'-', '_' and '.' (and not 'ca' or 'coordinator')", w);
  }
  std::error_code ec;
  fs::create_directories(request.dir, ec);
  FEDRA_REQUIRE(!ec, "cannot create '{}': {}", request.dir, ec.message());
  const std::string dir = request.dir;
  std::vector<std::string> written;

  std::vector<std::string> leaves;
  if (!request.hosts.empty()) leaves.push_back("coordinator");
  for (const auto& w : request.workers) leaves.push_back(w);
  for (const auto& stem : leaves) {
    for (const char* ext : {".pem", ".key"}) {
      const std::string path = dir + "/" + stem + ext;
      FEDRA_REQUIRE(!fs::exists(path), "'{}' exists; not overwriting a certificate or key (remove it "
                    "first to replace it)", path);
    }
  }

  const std::string ca_pem = dir + "/ca.pem";
  const std::string ca_key = dir + "/ca.key";
  KeyPtr ca_private;
  CertPtr ca_cert;
  if (fs::exists(ca_pem) && fs::exists(ca_key)) {
    FILE* f = std::fopen(ca_pem.c_str(), "r");
    FEDRA_REQUIRE(f, "cannot read '{}': {}", ca_pem, std::strerror(errno));
    ca_cert.reset(PEM_read_X509(f, nullptr, nullptr, nullptr));
    std::fclose(f);
    FEDRA_REQUIRE(ca_cert, "'{}' is not a PEM certificate: {}", ca_pem, openssl_reason());
    f = std::fopen(ca_key.c_str(), "r");
    FEDRA_REQUIRE(f, "cannot read '{}': {}", ca_key, std::strerror(errno));
    ca_private.reset(PEM_read_PrivateKey(f, nullptr, nullptr, nullptr));
    std::fclose(f);
    FEDRA_REQUIRE(ca_private, "'{}' is not a PEM private key: {}", ca_key, openssl_reason());
    FEDRA_REQUIRE(X509_check_private_key(ca_cert.get(), ca_private.get()) == 1,
                  "'{}' is not the key of '{}'", ca_key, ca_pem);
  } else {
    FEDRA_REQUIRE(!fs::exists(ca_pem) && !fs::exists(ca_key),
                  "'{}' has only one of ca.pem and ca.key; give a directory with both (to add "
                  "certificates to that CA) or neither (to make a new CA)", dir);
    ca_private = new_key();
    ca_cert = make_certificate(Kind::kCa, "Fedra test CA", ca_private.get(), nullptr, ca_private.get(), {},
                               request.days);
    write_pair(dir, "ca", ca_cert.get(), ca_private.get(), written);
  }

  if (!request.hosts.empty()) {
    KeyPtr key = new_key();
    CertPtr cert = make_certificate(Kind::kServer, "coordinator", key.get(), ca_cert.get(), ca_private.get(),
                                    request.hosts, request.days);
    write_pair(dir, "coordinator", cert.get(), key.get(), written);
  }
  for (const auto& w : request.workers) {
    KeyPtr key = new_key();
    CertPtr cert = make_certificate(Kind::kClient, w, key.get(), ca_cert.get(), ca_private.get(), {},
                                    request.days);
    write_pair(dir, w, cert.get(), key.get(), written);
  }
  return written;
}

}  // namespace fedra::transport::tcp
