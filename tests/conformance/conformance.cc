// fedra_conformance: drives a coordinator with scripted raw frames, one case per protocol rule
// (tests/conformance/cases.json; the vocabulary is in tests/conformance/README.md).
//
//   fedra_conformance --fedra build/fedra [--cases FILE] [--only ID] [--keep DIR]
//   fedra_conformance --coordinator 'CMD {port_file} {args}' ...
//
// For each case it starts a coordinator (by default `fedra coordinator` with the suite's job
// and the case's extra options; --coordinator runs another implementation, given the
// placeholders), connects as one or more workers over loopback TCP, sends exactly the frames the
// case scripts (Cap'n Proto envelopes built field by field, or raw bytes) and checks what comes
// back: each frame's kind, error kind, text, requestId and round, a closed connection, silence,
// or a line of the coordinator's log. It prints one PASS/FAIL line per case with the rule it
// checks, and exits 1 if any failed.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <asio.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "transport/codec.h"
#include "transport/error.h"
#include "transport/tcp/connection.h"

namespace fs = std::filesystem;
using json = nlohmann::json;
using Socket = asio::ip::tcp::socket;
using namespace fedra;

namespace {

struct Failed : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// One connection, as a worker.
struct Conn {
  std::unique_ptr<Socket> socket;
  std::optional<transport::Envelope> request;  // the last request (non-partial) received
  std::vector<std::vector<std::byte>> keep;    // bytes behind tensors being sent
};

class Runner {
 public:
  Runner(json suite, std::string coordinator_cmd, std::string fedra, fs::path dir)
      : suite_(std::move(suite)), cmd_(std::move(coordinator_cmd)), fedra_(std::move(fedra)), dir_(std::move(dir)) {}

  // Returns true if the case passed; prints its line.
  bool run(const json& c) {
    const std::string id = c.at("id");
    const fs::path dir = dir_ / id;
    fs::create_directories(dir);
    log_ = (dir / "coordinator.log").string();
    bool ok = true;
    std::string why;
    try {
      start(c, dir);
      for (const auto& step : c.at("steps")) do_step(step);
    } catch (const std::exception& e) {
      ok = false;
      why = e.what();
    }
    conns_.clear();
    stop();
    std::cout << (ok ? "PASS " : "FAIL ") << id << "  " << c.value("rule", std::string()) << "\n";
    if (!ok) std::cout << "     " << why << "\n     coordinator log: " << log_ << "\n";
    return ok;
  }

 private:
  void start(const json& c, const fs::path& dir) {
    // "--name value" pairs: the case's replace the suite's of the same name.
    std::vector<std::pair<std::string, std::string>> pairs;
    auto add = [&](const json& list) {
      for (size_t i = 0; i + 1 < list.size(); i += 2) {
        const std::string key = list[i], value = list[i + 1];
        auto it = std::find_if(pairs.begin(), pairs.end(), [&](const auto& p) { return p.first == key; });
        if (it != pairs.end()) it->second = value;
        else pairs.emplace_back(key, value);
      }
    };
    add(suite_.at("coordinator_args"));
    add(c.value("coordinator_args", json::array()));
    std::vector<std::string> args;
    for (const auto& [k, v] : pairs) {
      args.push_back(k);
      args.push_back(v);
    }
    const std::string port_file = (dir / "port").string();
    fs::remove(port_file);
    std::vector<std::string> argv;
    if (cmd_.empty()) {
      argv = {fedra_, "coordinator", "--listen", "127.0.0.1:0", "--port-file", port_file};
      argv.insert(argv.end(), args.begin(), args.end());
    } else {
      std::string joined;
      for (const auto& a : args) joined += " '" + a + "'";
      std::string cmd = cmd_;
      for (const auto& [key, value] : {std::pair<std::string, std::string>{"{port_file}", port_file}, {"{args}", joined}}) {
        for (size_t at; (at = cmd.find(key)) != std::string::npos;) cmd.replace(at, key.size(), value);
      }
      argv = {"/bin/sh", "-c", "exec " + cmd};
    }
    pid_ = ::fork();
    if (pid_ == 0) {
      const int fd = ::open(log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      std::vector<char*> raw;
      for (auto& a : argv) raw.push_back(a.data());
      raw.push_back(nullptr);
      ::execv(raw[0], raw.data());
      std::_Exit(127);
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (std::chrono::steady_clock::now() < deadline) {
      const std::string port = read_file(port_file);
      if (!port.empty() && port.back() == '\n') {
        port_ = std::stoi(port);
        return;
      }
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        throw Failed("the coordinator exited before listening");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    throw Failed("the coordinator wrote no port file within 30 s");
  }

  void stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

  Conn& conn(const json& step) {
    const std::string name = step.value("conn", std::string("a"));
    auto& c = conns_[name];
    if (!c.socket) {
      c.socket = std::make_unique<Socket>(transport::tcp::connect_with_retry(
          io_, transport::tcp::parse_endpoint("127.0.0.1:" + std::to_string(port_)), std::chrono::seconds(10)));
    }
    return c;
  }

  void write(Conn& c, const std::vector<std::byte>& bytes) {
    asio::error_code ec;
    asio::write(*c.socket, asio::buffer(bytes.data(), bytes.size()), ec);
    if (ec) throw Failed("writing failed: " + ec.message());
  }

  // The next frame within `timeout`; nullopt if the peer closed. Throws Failed on timeout.
  std::optional<transport::Envelope> read(Conn& c, double timeout) {
    const transport::Limits limits;
    Socket& s = *c.socket;
    std::vector<std::byte> table(8);
    if (!read_exactly(s, table.data(), 8, timeout)) return std::nullopt;
    const uint64_t table_bytes = transport::frame_table_bytes(table.data(), limits);
    table.resize(table_bytes);
    if (table_bytes > 8 && !read_exactly(s, table.data() + 8, table_bytes - 8, timeout)) return std::nullopt;
    auto header = transport::parse_frame_header(table.data(), table_bytes, limits);
    auto body = transport::allocate_aligned(header.body_bytes);
    if (!read_exactly(s, body.get(), header.body_bytes, timeout)) return std::nullopt;
    return transport::decode(transport::InFrame(std::move(header), std::move(body)), limits);
  }

  // False if the peer closed first; throws Failed when nothing comes within `timeout` seconds.
  bool read_exactly(Socket& s, std::byte* out, uint64_t n, double timeout) {
    uint64_t done = 0;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout);
    s.non_blocking(true);
    while (done < n) {
      asio::error_code ec;
      const size_t got = s.read_some(asio::buffer(out + done, n - done), ec);
      if (ec == asio::error::would_block || ec == asio::error::try_again) {
        if (std::chrono::steady_clock::now() > deadline) {
          throw Failed(fmt::format("nothing (more) arrived within {} s", timeout));
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
        continue;
      }
      if (ec) return false;  // eof, reset: closed
      done += got;
    }
    return true;
  }

  std::vector<std::byte> frame(Conn& c, const json& e) {
    transport::Envelope env;
    env.version = e.value("version", transport::kProtocolVersion);
    env.kind = e.at("kind");
    env.sender = e.value("sender", std::string("conformance"));
    env.step = e.value("step", uint64_t{0});
    env.partial = e.value("partial", false);
    auto number_or_ref = [&](const char* key, uint64_t fallback, const char* what) -> uint64_t {
      if (!e.contains(key)) return fallback;
      const json& v = e.at(key);
      if (v.is_number()) return v.get<uint64_t>();
      const std::string ref = v;
      if (!c.request) throw Failed(fmt::format("{} refers to a request, but none was received", ref));
      if (ref == "$request") return c.request->request_id;
      if (ref == "$round") return c.request->round;
      if (ref == "$round+1") return c.request->round + 1;
      throw Failed(fmt::format("unknown {} reference '{}'", what, ref));
    };
    env.request_id = number_or_ref("request_id", 0, "request_id");
    env.round = static_cast<uint32_t>(number_or_ref("round", 0, "round"));
    const json metrics = e.value("metrics", json::object()), options = e.value("options", json::object());
    for (const auto& [k, v] : metrics.items()) env.metrics.emplace_back(k, v.get<double>());
    for (const auto& [k, v] : options.items()) {
      env.options.emplace_back(k, v.get<std::string>() == "$token" ? suite_.value("token", std::string()) : v.get<std::string>());
    }
    if (e.contains("error")) {
      const std::string kind = e["error"].value("kind", std::string("failed"));
      env.error = transport::WireError{kind == "overloaded" ? ErrorKind::kOverloaded : ErrorKind::kFailed,
                                       e["error"].value("message", std::string())};
    }
    const json tensors = e.value("tensors", json::array());
    if (tensors.is_object()) {  // {"echo": true, ...}: the last request's tensors, possibly spoilt
      if (!c.request) throw Failed("tensors echo the last request, but none was received");
      for (const auto& t : c.request->tensors) {
        transport::TensorData d = t;
        c.keep.emplace_back(t.data, t.data + t.nbytes);
        d.data = c.keep.back().data();
        env.tensors.push_back(d);
      }
      if (tensors.value("drop_last", false) && !env.tensors.empty()) env.tensors.pop_back();
      if (tensors.value("nan", false) && !env.tensors.empty()) {
        auto& t = env.tensors.front();
        const float nan = std::nanf("");
        std::memcpy(const_cast<std::byte*>(t.data), &nan, sizeof nan);
      }
    } else {
      for (const auto& t : tensors) {
        transport::TensorData d;
        d.name = t.at("name");
        const std::string dtype = t.value("dtype", std::string("float32"));
        d.shape = t.at("shape").get<std::vector<int64_t>>();
        std::vector<std::byte> bytes;
        if (dtype == "int64") {
          d.dtype = transport::DType::kInt64;
          for (const auto& v : t.at("values")) {
            const int64_t x = v.get<int64_t>();
            const auto* p = reinterpret_cast<const std::byte*>(&x);
            bytes.insert(bytes.end(), p, p + 8);
          }
        } else if (dtype == "uint8") {
          d.dtype = transport::DType::kUInt8;
          bytes.assign(static_cast<size_t>(d.numel()), std::byte{0});
        } else {
          throw Failed("the runner writes int64 and uint8 tensors only, not " + dtype);
        }
        c.keep.push_back(std::move(bytes));
        d.data = c.keep.back().data();
        d.nbytes = c.keep.back().size();
        env.tensors.push_back(d);
      }
    }
    return transport::encode(env, transport::Limits{}).to_bytes();
  }

  static std::string describe(const transport::Envelope& e) {
    return fmt::format("'{}' (round {}, requestId {}{}{})", e.kind, e.round, e.request_id, e.partial ? ", partial" : "",
                       e.error ? ", error: " + e.error->message : std::string());
  }

  void check_frame(Conn& c, const transport::Envelope& got, const json& want) {
    auto fail = [&](const std::string& what) { throw Failed(fmt::format("{}; got {}", what, describe(got))); };
    if (want.contains("kind") && got.kind != want["kind"].get<std::string>()) {
      fail("expected kind '" + want["kind"].get<std::string>() + "'");
    }
    if (want.contains("error_kind")) {
      if (!got.error) fail("expected an error");
      const std::string kind(error_kind_name(got.error->kind));
      if (kind != want["error_kind"].get<std::string>()) fail("expected error kind " + want["error_kind"].get<std::string>());
    }
    if (want.contains("contains")) {
      const std::string text = got.error ? got.error->message : std::string();
      for (const auto& s : want["contains"]) {
        if (text.find(s.get<std::string>()) == std::string::npos) fail("expected the text to contain '" + s.get<std::string>() + "'");
      }
    }
    if (want.contains("request_id")) {
      const json& r = want["request_id"];
      const uint64_t expect = r.is_number() ? r.get<uint64_t>() : (c.request ? c.request->request_id : 0);
      if (got.request_id != expect) fail(fmt::format("expected requestId {}", expect));
    }
    if (want.contains("option")) {
      for (const auto& [k, v] : want["option"].items()) {
        bool found = false;
        for (const auto& [name, value] : got.options) found |= name == k && value == v.get<std::string>();
        if (!found) fail(fmt::format("expected option {} = {}", k, v.get<std::string>()));
      }
    }
  }

  void do_step(const json& step) {
    const double within = step.value("within", 15.0);
    if (step.contains("send")) {
      Conn& c = conn(step);
      write(c, frame(c, step["send"]));
    } else if (step.contains("send_truncated")) {
      Conn& c = conn(step);
      auto bytes = frame(c, step["send_truncated"]);
      bytes.resize(bytes.size() / 2);
      write(c, bytes);
      c.socket->close();
    } else if (step.contains("send_random_bytes")) {
      Conn& c = conn(step);
      std::vector<std::byte> junk(step["send_random_bytes"].get<size_t>());
      std::mt19937 rng(1);
      for (auto& b : junk) b = static_cast<std::byte>(rng() | 0x80);
      write(c, junk);
    } else if (step.contains("expect")) {
      Conn& c = conn(step);
      auto got = read(c, within);
      if (!got) throw Failed("expected a frame; the coordinator closed the connection");
      check_frame(c, *got, step["expect"]);
    } else if (step.contains("await")) {
      // Frames until a request of this kind (welcome and others before it are skipped).
      Conn& c = conn(step);
      const std::string kind = step["await"];
      for (;;) {
        auto got = read(c, within);
        if (!got) throw Failed("the coordinator closed the connection while '" + kind + "' was awaited");
        if (got->kind == kind && !got->partial) {
          c.request = std::move(*got);
          break;
        }
        if (got->error) throw Failed("awaiting '" + kind + "', got " + describe(*got));
      }
    } else if (step.contains("expect_closed")) {
      // The coordinator closes the connection; an error frame before it is allowed and checked.
      Conn& c = conn(step);
      for (int frames = 0;; ++frames) {
        auto got = read(c, within);
        if (!got) break;
        if (!got->error || frames > 0) throw Failed("expected the connection closed; got " + describe(*got));
        if (step["expect_closed"].is_object()) check_frame(c, *got, step["expect_closed"]);
      }
    } else if (step.contains("expect_nothing")) {
      Conn& c = conn(step);
      try {
        auto got = read(c, step["expect_nothing"].get<double>());
        throw std::logic_error(got ? "expected nothing; got " + describe(*got) : "expected nothing; the connection closed");
      } catch (const Failed&) {
        // nothing arrived in time: as expected
      }
    } else if (step.contains("expect_log")) {
      const std::string text = step["expect_log"];
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(within);
      while (read_file(log_).find(text) == std::string::npos) {
        if (std::chrono::steady_clock::now() > deadline) throw Failed("the coordinator's log lacks '" + text + "'");
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    } else if (step.contains("close")) {
      conn(step).socket->close();
    } else {
      throw Failed("unknown step " + step.dump());
    }
  }

  json suite_;
  std::string cmd_, fedra_;
  fs::path dir_;
  std::string log_;
  asio::io_context io_;
  std::map<std::string, Conn> conns_;
  pid_t pid_ = -1;
  int port_ = 0;
};

}  // namespace

int main(int argc, char** argv) {
  std::string fedra, cmd, only, keep;
  std::string cases = FEDRA_CONFORMANCE_CASES;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::cerr << a << " needs a value\n";
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--fedra") fedra = value();
    else if (a == "--coordinator") cmd = value();
    else if (a == "--cases") cases = value();
    else if (a == "--only") only = value();
    else if (a == "--keep") keep = value();
    else {
      std::cout << "usage: fedra_conformance (--fedra PATH | --coordinator 'CMD {port_file} {args}') [--cases FILE] "
                   "[--only ID] [--keep DIR]\n"
                   "Drives a coordinator with the scripted frames of tests/conformance/cases.json, one case per "
                   "protocol rule;\nsee tests/conformance/README.md.\n";
      return a == "--help" || a == "-h" ? 0 : 2;
    }
  }
  if (fedra.empty() == cmd.empty()) {
    std::cerr << "give either --fedra PATH (Fedra's coordinator) or --coordinator CMD (another one)\n";
    return 2;
  }
  json suite;
  try {
    suite = json::parse(read_file(cases));
  } catch (const std::exception& e) {
    std::cerr << "cannot read the cases " << cases << ": " << e.what() << "\n";
    return 2;
  }
  const fs::path dir = keep.empty() ? fs::temp_directory_path() / fmt::format("fedra-conformance-{}", ::getpid()) : fs::path(keep);
  fs::create_directories(dir);
  std::cout.setf(std::ios::unitbuf);
  ::signal(SIGPIPE, SIG_IGN);
  Runner runner(suite, cmd, fedra, dir);
  int passed = 0, failed = 0;
  for (const auto& c : suite.at("cases")) {
    if (!only.empty() && c.at("id") != only) continue;
    (runner.run(c) ? passed : failed)++;
  }
  std::cout << passed << " passed, " << failed << " failed\n";
  if (keep.empty() && failed == 0) fs::remove_all(dir);
  return failed == 0 && passed > 0 ? 0 : 1;
}
