// TLS between real `fedra` processes over loopback: certificates from `fedra certs`, mutual
// authentication, workers refused for a wrong certificate, no certificate, no TLS or a wrong
// token (each with the reason in the coordinator's log, and none of them receiving anything but
// an error), a worker that refuses a coordinator it cannot verify, the listen policy, and a
// relay on the wire that sees the token and the model in clear text without TLS and neither with it.
#include "tests/testing.h"

#include <sys/socket.h>
#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <mutex>
#include <thread>

#include <asio.hpp>

#include "tests/test_util.h"

using namespace fedra;
using namespace fedra::test;
namespace fs = std::filesystem;

namespace {

constexpr const char* kToken = "tls-test-token-7f3a";

std::vector<std::string> list_dir(const std::string& dir) {
  std::vector<std::string> out;
  if (!fs::exists(dir)) return out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

// The frames a worker received, from its --dump-frames directory.
std::vector<std::string> received_frames(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& name : list_dir(dir)) {
    if (contains(name, "-recv-")) out.push_back(read_file(dir + "/" + name));
  }
  return out;
}

// Copies bytes between one worker and the coordinator, recording both directions: what an
// eavesdropper on the wire would see.
class Relay {
 public:
  explicit Relay(uint16_t upstream)
      : acceptor_(io_, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)),
        a_(io_),
        b_(io_) {
    port_ = acceptor_.local_endpoint().port();
    thread_ = std::thread([this, upstream] {
      asio::error_code ec;
      acceptor_.accept(a_, ec);
      if (ec) return;
      b_.connect(asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), upstream), ec);
      if (ec) return;
      std::thread back([this] { pump(b_, a_, down_); });
      pump(a_, b_, up_);
      back.join();
    });
  }
  ~Relay() { stop(); }
  uint16_t port() const { return port_; }
  // Ends both directions and waits for the copying threads; then up()/down() are complete.
  void stop() {
    if (!thread_.joinable()) return;
    ::shutdown(acceptor_.native_handle(), SHUT_RDWR);
    ::shutdown(a_.native_handle(), SHUT_RDWR);
    ::shutdown(b_.native_handle(), SHUT_RDWR);
    thread_.join();
  }
  const std::string& up() const { return up_; }      // worker -> coordinator
  const std::string& down() const { return down_; }  // coordinator -> worker

 private:
  static void pump(asio::ip::tcp::socket& from, asio::ip::tcp::socket& to, std::string& record) {
    std::vector<char> buf(1 << 16);
    for (;;) {
      asio::error_code ec;
      const size_t n = from.read_some(asio::buffer(buf), ec);
      if (ec) break;
      record.append(buf.data(), n);
      asio::write(to, asio::buffer(buf.data(), n), ec);
      if (ec) break;
    }
    ::shutdown(to.native_handle(), SHUT_WR);
  }

  asio::io_context io_;
  asio::ip::tcp::acceptor acceptor_;
  asio::ip::tcp::socket a_, b_;
  uint16_t port_ = 0;
  std::string up_, down_;
  std::thread thread_;
};

struct Pki {
  TempDir dir;
  std::string ca, coord_cert, coord_key;
  std::string cert(const std::string& name) const { return dir / "pki/" + name + ".pem"; }
  std::string key(const std::string& name) const { return dir / "pki/" + name + ".key"; }
};

void make_pki(Pki& p) {
  REQUIRE(run_fedra({"certs", "--out", p.dir / "pki", "--names", "good-0,good-1,stranger"},
                    p.dir / "certs.log", std::chrono::seconds(30)) == 0);
  // A second CA whose certificates the coordinator must not accept.
  REQUIRE(run_fedra({"certs", "--out", p.dir / "rogue", "--names", "good-0"}, p.dir / "rogue-certs.log",
                    std::chrono::seconds(30)) == 0);
  p.ca = p.dir / "pki/ca.pem";
  p.coord_cert = p.dir / "pki/coordinator.pem";
  p.coord_key = p.dir / "pki/coordinator.key";
}

std::vector<std::string> coordinator_args(const Pki& p, const TempDir& dir, int workers, bool tls) {
  std::vector<std::string> args = {
      "coordinator", "--listen", "127.0.0.1:0", "--port-file", dir / "port",
      "--min-workers", std::to_string(workers), "--wait-timeout", "90",
      "--token", kToken, "--model", "mlp:784-32-10", "--test-data", "fmnist:test_limit=500",
      "--out", dir / "out", "--threads", "1", "--fedavg.rounds", "2",
      "--fedavg.local_steps", "10", "--fedavg.round_timeout", "60"};
  if (tls) {
    for (const std::string& a : {std::string("--tls-cert"), p.coord_cert, std::string("--tls-key"), p.coord_key,
                                 std::string("--tls-ca"), p.ca}) {
      args.push_back(a);
    }
  }
  return args;
}

struct Running {
  ChildProcess coordinator;
  std::string port;
};

Running start_coordinator(const Pki& p, const TempDir& dir, int workers, bool tls) {
  Running r;
  r.coordinator = start_fedra(coordinator_args(p, dir, workers, tls), dir / "coordinator.log");
  r.port = wait_for_file(dir / "port", std::chrono::seconds(30));
  return r;
}

std::vector<std::string> worker_args(const std::string& port, const std::string& name, const std::string& token) {
  return {"worker", "--connect", "127.0.0.1:" + port, "--name", name, "--token", token,
          "--dataset", "fmnist:limit=600", "--threads", "1", "--connect-timeout", "20"};
}

std::vector<std::string> with_tls(std::vector<std::string> args, const std::string& ca,
                                  const std::string& cert = {}, const std::string& key = {}) {
  args.push_back("--tls-ca");
  args.push_back(ca);
  if (!cert.empty()) {
    args.insert(args.end(), {"--tls-cert", cert, "--tls-key", key});
  }
  return args;
}

}  // namespace

TEST_CASE("fedra certs: a CA, a coordinator certificate for its hosts, worker certificates; keys 0600, nothing overwritten") {
  TempDir dir;
  REQUIRE(run_fedra({"certs", "--out", dir / "pki", "--workers", "2", "--hosts", "127.0.0.1,localhost"},
                    dir / "a.log", std::chrono::seconds(30)) == 0);
  CHECK(list_dir(dir / "pki") == std::vector<std::string>{"ca.key", "ca.pem", "coordinator.key", "coordinator.pem",
                                                          "worker-0.key", "worker-0.pem", "worker-1.key",
                                                          "worker-1.pem"});
  struct stat st {};
  REQUIRE(::stat((dir / "pki/worker-0.key").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  REQUIRE(::stat((dir / "pki/ca.key").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  const std::string ca_before = read_file(dir / "pki/ca.pem");
  // Adding a worker later reuses the CA (and keeps the coordinator's certificate).
  REQUIRE(run_fedra({"certs", "--out", dir / "pki", "--names", "hospital-3"}, dir / "b.log",
                    std::chrono::seconds(30)) == 0);
  CHECK(read_file(dir / "pki/ca.pem") == ca_before);
  CHECK(fs::exists(dir / "pki/hospital-3.pem"));
  // An existing certificate is never overwritten.
  CHECK(run_fedra({"certs", "--out", dir / "pki", "--names", "worker-1"}, dir / "c.log", std::chrono::seconds(30)) == 2);
  CHECK(contains(read_file(dir / "c.log"), "worker-1.pem' exists; not overwriting"));
}

TEST_CASE("mutual TLS: good workers train; a wrong certificate, no certificate, no TLS or a wrong token is refused with the reason and receives nothing") {
  Pki pki;
  make_pki(pki);
  TempDir dir;
  const auto [coordinator, port] = start_coordinator(pki, dir, 2, true);

  struct Intruder {
    std::string name;
    std::vector<std::string> args;
    std::string coordinator_says;  // in the "rejected connection" line
    std::string worker_says;
  };
  const std::vector<Intruder> intruders = {
      {"rogue-ca", with_tls(worker_args(port, "rogue-ca", kToken), pki.ca, pki.dir / "rogue/good-0.pem", pki.dir / "rogue/good-0.key"),
       "certificate 'O = Fedra test PKI, CN = good-0' failed verification: unable to get local issuer certificate",
       "alert unknown ca"},
      {"no-cert", with_tls(worker_args(port, "no-cert", kToken), pki.ca),
       "peer did not return a certificate", "the coordinator requires a worker certificate"},
      {"plain", worker_args(port, "plain", kToken),
       "the peer does not speak TLS", "if the coordinator requires TLS, give --tls-ca"},
      {"bad-token", with_tls(worker_args(port, "bad-token", "wrong-token"), pki.ca, pki.cert("stranger"), pki.key("stranger")),
       "authentication failed: the worker's token does not match", "coordinator refused this worker: authentication failed"},
  };
  for (const auto& in : intruders) {
    CAPTURE(in.name);
    auto args = in.args;
    args.insert(args.end(), {"--dump-frames", dir / ("frames-" + in.name)});
    const int code = run_fedra(args, dir / (in.name + ".log"), std::chrono::seconds(60));
    CHECK(code != 0);
    CHECK(code != -1);
    const std::string log = read_file(dir / (in.name + ".log"));
    INFO("worker log:\n" << log);
    CHECK(contains(log, in.worker_says));
    // Never the model, never the job: nothing arrived but (for the token) the refusal itself.
    const auto frames = received_frames(dir / ("frames-" + in.name));
    if (in.name == "bad-token") {
      REQUIRE(frames.size() == 1);
      CHECK(contains(frames[0], "authentication failed"));
      CHECK(!contains(frames[0], "mlp:784-32-10"));
      CHECK(frames[0].size() < 1024);
    } else {
      CHECK(frames.empty());
    }
  }
  // The same worker names with the right certificates complete the job.
  std::vector<ChildProcess> good;
  for (int i = 0; i < 2; ++i) {
    const std::string name = "good-" + std::to_string(i);
    good.push_back(start_fedra(with_tls(worker_args(port, name, kToken), pki.ca, pki.cert(name), pki.key(name)),
                               dir / (name + ".log")));
  }
  const int code = finish(coordinator, std::chrono::seconds(120));
  const std::string log = read_file(dir / "coordinator.log");
  INFO("coordinator log:\n" << log);
  CHECK(code == 0);
  for (const auto& g : good) CHECK(finish(g, std::chrono::seconds(30)) == 0);
  CHECK(contains(log, "TLS, mutual: workers need a certificate signed by"));
  for (const auto& in : intruders) {
    CAPTURE(in.name);
    CHECK(contains(log, in.coordinator_says));
  }
  size_t rejections = 0;
  for (size_t at = log.find("rejected connection from"); at != std::string::npos;
       at = log.find("rejected connection from", at + 1)) {
    ++rejections;
  }
  CHECK(rejections == intruders.size());
  CHECK(contains(log, "worker good-0 joined from 127.0.0.1:"));
  CHECK(contains(log, "with certificate 'O = Fedra test PKI, CN = good-1'"));
  const auto metrics = read_jsonl(dir / "out/metrics.jsonl");
  REQUIRE(metrics.size() == 2);
  CHECK(metrics[1]["workers_ok"].get<int>() == 2);
  CHECK(metrics[1]["test_accuracy"].get<double>() > 0.3);
}

TEST_CASE("a worker refuses a coordinator whose certificate its CA did not sign, or that is not for the name it expects") {
  Pki pki;
  make_pki(pki);
  TempDir dir;
  const auto [coordinator, port] = start_coordinator(pki, dir, 1, true);
  const auto base = worker_args(port, "good-0", kToken);
  CHECK(run_fedra(with_tls(base, pki.dir / "rogue/ca.pem", pki.cert("good-0"), pki.key("good-0")),
                  dir / "wrong-ca.log", std::chrono::seconds(60)) == 1);
  CHECK(contains(read_file(dir / "wrong-ca.log"),
                 "in the coordinator's chain failed verification: self-signed certificate in certificate chain"));
  auto misnamed = with_tls(base, pki.ca, pki.cert("good-0"), pki.key("good-0"));
  misnamed.insert(misnamed.end(), {"--tls-server-name", "fedra.example.org"});
  CHECK(run_fedra(misnamed, dir / "wrong-name.log", std::chrono::seconds(60)) == 1);
  CHECK(contains(read_file(dir / "wrong-name.log"),
                 "is not valid for 'fedra.example.org' (it names IP:127.0.0.1, DNS:localhost)"));
  // `localhost` is one of its names: checking for it works (dialled by address, since a bare
  // chroot may have no /etc/hosts to resolve the name).
  auto by_name = with_tls(base, pki.ca, pki.cert("good-0"), pki.key("good-0"));
  by_name.insert(by_name.end(), {"--tls-server-name", "localhost"});
  CHECK(run_fedra(by_name, dir / "good.log", std::chrono::seconds(90)) == 0);
  CHECK(finish(coordinator, std::chrono::seconds(60)) == 0);
  const std::string log = read_file(dir / "coordinator.log");
  CHECK(contains(log, "the worker refused this connection"));
  CHECK(contains(log, "with certificate 'O = Fedra test PKI, CN = good-0'"));
}

TEST_CASE("on the wire: without TLS a relay reads the token and the model; with TLS, neither") {
  Pki pki;
  make_pki(pki);
  for (const bool tls : {false, true}) {
    CAPTURE(tls);
    TempDir dir;
    const auto [coordinator, port] = start_coordinator(pki, dir, 1, tls);
    Relay relay(static_cast<uint16_t>(std::stoi(port)));
    auto args = worker_args(std::to_string(relay.port()), "good-0", kToken);
    if (tls) args = with_tls(args, pki.ca, pki.cert("good-0"), pki.key("good-0"));
    args.insert(args.end(), {"--dump-frames", dir / "frames"});
    CHECK(run_fedra(args, dir / "worker.log", std::chrono::seconds(90)) == 0);
    CHECK(finish(coordinator, std::chrono::seconds(60)) == 0);
    relay.stop();
    // The largest frame the worker received holds the global model; take 256 bytes of it.
    const auto frames = received_frames(dir / "frames");
    REQUIRE(!frames.empty());
    const std::string& model = *std::max_element(frames.begin(), frames.end(),
                                                 [](const auto& a, const auto& b) { return a.size() < b.size(); });
    REQUIRE(model.size() > 100000);  // mlp:784-32-10 holds 25,450 floats
    const std::string window = model.substr(model.size() / 2, 256);
    INFO("bytes up " << relay.up().size() << ", down " << relay.down().size());
    CHECK(relay.down().size() > model.size());
    CHECK(contains(relay.up(), kToken) == !tls);
    CHECK(contains(relay.down(), window) == !tls);
  }
}

TEST_CASE("listen policy: plain TCP on a non-loopback address is refused unless --insecure") {
  Pki pki;
  make_pki(pki);
  TempDir dir;
  // 192.0.2.1 (TEST-NET-1) is on no interface here: once the policy lets a listen through, the
  // bind fails, so no port is ever opened outside loopback.
  const std::vector<std::string> base = {"coordinator", "--listen", "192.0.2.1:7000", "--wait-timeout", "1",
                                         "--test-data", "none"};
  CHECK(run_fedra(base, dir / "plain.log", std::chrono::seconds(30)) == 2);
  CHECK(contains(read_file(dir / "plain.log"), "refusing to listen on 192.0.2.1:7000 without TLS"));
  auto insecure = base;
  insecure.push_back("--insecure");
  CHECK(run_fedra(insecure, dir / "insecure.log", std::chrono::seconds(30)) == 2);
  CHECK(contains(read_file(dir / "insecure.log"), "cannot listen on 192.0.2.1:7000"));
  auto tls = base;
  tls.insert(tls.end(), {"--tls-cert", pki.coord_cert, "--tls-key", pki.coord_key});
  CHECK(run_fedra(tls, dir / "tls.log", std::chrono::seconds(30)) == 2);
  CHECK(contains(read_file(dir / "tls.log"), "cannot listen on 192.0.2.1:7000"));
  // Bad TLS files are named.
  auto missing = base;
  missing.insert(missing.end(), {"--tls-cert", dir / "nope.pem", "--tls-key", pki.coord_key});
  CHECK(run_fedra(missing, dir / "missing.log", std::chrono::seconds(30)) == 2);
  CHECK(contains(read_file(dir / "missing.log"), "nope.pem': no such file"));
  auto mismatched = base;
  mismatched.insert(mismatched.end(), {"--tls-cert", pki.coord_cert, "--tls-key", pki.key("good-0")});
  CHECK(run_fedra(mismatched, dir / "mismatched.log", std::chrono::seconds(30)) == 2);
  CHECK(contains(read_file(dir / "mismatched.log"), "does not belong to --tls-cert"));
}

TEST_CASE("fedra simulate --tls: every worker joins over mutual TLS with its own certificate") {
  TempDir dir;
  const int code = run_fedra({"simulate", "--workers", "2", "--model", "mlp:784-32-10", "--dataset", "fmnist:limit=1000",
                              "--test-data", "fmnist:test_limit=500", "--fedavg.rounds", "2", "--fedavg.local_steps", "10",
                              "--tls", "--out", dir / "out"},
                             dir / "simulate.log", std::chrono::seconds(180));
  const std::string log = read_file(dir / "simulate.log");
  INFO(log);
  CHECK(code == 0);
  CHECK(contains(log, "with certificate 'O = Fedra test PKI, CN = worker-0'"));
  CHECK(contains(log, "with certificate 'O = Fedra test PKI, CN = worker-1'"));
  CHECK(fs::exists(dir / "out/certs/ca.pem"));
  CHECK(read_jsonl(dir / "out/metrics.jsonl").size() == 2);
}
