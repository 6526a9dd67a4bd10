// rogue_worker: a peer that misbehaves on purpose, for the bad-input integration tests.
//
//   rogue_worker MODE HOST:PORT [TOKEN]
//
// Modes (each prints what it did and what the coordinator answered):
//   random-bytes          4 KiB of random bytes instead of a hello
//   truncated             half of a valid hello, then close
//   oversize              a hello carrying a 2 MiB tensor (run the coordinator with a 1 MiB cap)
//   bad-version           a hello claiming protocol version 99
//   bad-token             a hello with the wrong token
//   bad-tensor            a proper hello; answers the first fit with a tensor whose byte count
//                         does not match its dtype and shape, then keeps answering that way
//   disconnect-mid-round  a proper hello; closes the connection on receiving its first fit
// It speaks raw TCP so it can send exactly the bytes it wants.
#include <iostream>
#include <random>
#include <string>

#include <ATen/ATen.h>
#include <capnp/message.h>
#include <capnp/serialize.h>

#include "core/kit/message.h"
#include "core/net/protocol.h"
#include "transport/codec.h"
#include "transport/schema/fedra.capnp.h"
#include "transport/tcp/connection.h"

using namespace fedra;
using Socket = asio::ip::tcp::socket;

namespace {

void write_bytes(Socket& s, const std::vector<std::byte>& bytes) {
  asio::error_code ec;
  asio::write(s, asio::buffer(bytes.data(), bytes.size()), ec);
  if (ec) std::cout << "write stopped: " << ec.message() << "\n";
}

// Reads one frame; nullopt when the peer closes first.
std::optional<transport::Envelope> read_frame(Socket& s) {
  const transport::Limits limits;
  std::vector<std::byte> table(8);
  asio::error_code ec;
  asio::read(s, asio::buffer(table), ec);
  if (ec) return std::nullopt;
  const uint64_t table_bytes = transport::frame_table_bytes(table.data(), limits);
  table.resize(table_bytes);
  if (table_bytes > 8) asio::read(s, asio::buffer(table.data() + 8, table_bytes - 8), ec);
  if (ec) return std::nullopt;
  auto header = transport::parse_frame_header(table.data(), table_bytes, limits);
  auto body = transport::allocate_aligned(header.body_bytes);
  asio::read(s, asio::buffer(body.get(), header.body_bytes), ec);
  if (ec) return std::nullopt;
  return transport::decode(transport::InFrame(std::move(header), std::move(body)), limits);
}

void report_answer(Socket& s) {
  auto env = read_frame(s);
  if (!env) {
    std::cout << "coordinator closed the connection without a message\n";
  } else if (env->kind == protocol::kError && env->error) {
    std::cout << "coordinator said: " << env->error->message << "\n";
  } else {
    std::cout << "coordinator sent '" << env->kind << "'\n";
  }
}

std::vector<std::byte> hello_frame(const std::string& token, uint32_t version, int64_t padding_bytes = 0) {
  Message hello(protocol::kHello);
  hello.sender = "rogue";
  hello.metrics["num_examples"] = 100;
  if (!token.empty()) hello.options["token"] = token;
  if (padding_bytes > 0) hello.tensors.emplace_back("padding", at::zeros({padding_bytes}, at::kByte));
  transport::Envelope env = to_envelope(hello);
  env.version = version;
  return transport::encode(env, transport::Limits{}).to_bytes();
}

// A fit result whose first tensor has 12 bytes where float32[2,2] needs 16.
std::vector<std::byte> bad_result(const transport::Envelope& fit) {
  capnp::MallocMessageBuilder b;
  auto root = b.initRoot<wire::Envelope>();
  root.setVersion(transport::kProtocolVersion);
  root.setKind("fedavg.fit_result");
  root.setRound(fit.round);
  root.setSender("rogue");
  root.setRequestId(fit.request_id);
  auto t = root.initTensors(1)[0];
  t.setName("fc1.weight");
  t.setDtype(wire::DType::FLOAT32);
  auto shape = t.initShape(2);
  shape.set(0, 2);
  shape.set(1, 2);
  t.initChunks(1).init(0, 12);
  auto m = root.initMetrics(1)[0];
  m.setName("num_examples");
  m.setValue(100);
  auto words = capnp::messageToFlatArray(b);
  auto bytes = words.asBytes();
  return std::vector<std::byte>(reinterpret_cast<const std::byte*>(bytes.begin()),
                                reinterpret_cast<const std::byte*>(bytes.end()));
}

// Reads until the welcome, then answers fits according to the mode until shutdown.
int play_worker(Socket& s, const std::string& mode) {
  for (;;) {
    auto env = read_frame(s);
    if (!env) {
      std::cout << "coordinator closed the connection\n";
      return 0;
    }
    if (env->kind == protocol::kWelcome) {
      std::cout << "welcomed\n";
      continue;
    }
    if (env->kind == protocol::kError && env->error) {
      std::cout << "coordinator said (request " << env->request_id << "): " << env->error->message << "\n";
      if (mode == "partial-reply") continue;  // told; the job goes on without this reply
      return 0;
    }
    if (env->kind == protocol::kShutdown || env->kind == protocol::kError) {
      std::cout << "coordinator sent '" << env->kind << "'\n";
      return 0;
    }
    if (mode == "disconnect-mid-round") {
      std::cout << "received '" << env->kind << "' for round " << env->round << "; disconnecting\n";
      return 0;
    }
    if (mode == "partial-reply") {  // a well-formed part of a reply to a request that takes one
      std::cout << "received '" << env->kind << "' for round " << env->round << "; answering with a partial reply\n";
      Message part("fedavg.fit_result", env->round);
      transport::Envelope out = to_envelope(part);
      out.request_id = env->request_id;
      out.partial = true;
      write_bytes(s, transport::encode(out, transport::Limits{}).to_bytes());
      continue;
    }
    std::cout << "received '" << env->kind << "' for round " << env->round
              << "; answering with a malformed tensor\n";
    write_bytes(s, bad_result(*env));
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: rogue_worker MODE HOST:PORT [TOKEN]\n";
    return 2;
  }
  const std::string mode = argv[1];
  const std::string token = argc > 3 ? argv[3] : "";
  std::cout.setf(std::ios::unitbuf);
  try {
    asio::io_context io;
    Socket s = fedra::transport::tcp::connect_with_retry(io, fedra::transport::tcp::parse_endpoint(argv[2]),
                                                              std::chrono::seconds(10));
    if (mode == "random-bytes") {
      std::vector<std::byte> junk(4096);
      std::mt19937 rng(1);
      for (auto& b : junk) b = static_cast<std::byte>(rng() | 0x80);
      write_bytes(s, junk);
      report_answer(s);
    } else if (mode == "truncated") {
      const auto frame = hello_frame(token, transport::kProtocolVersion);
      write_bytes(s, std::vector<std::byte>(frame.begin(), frame.begin() + static_cast<long>(frame.size() / 2)));
      std::cout << "sent " << frame.size() / 2 << " of " << frame.size() << " bytes, closing\n";
    } else if (mode == "oversize") {
      write_bytes(s, hello_frame(token, transport::kProtocolVersion, 2 << 20));
      report_answer(s);
    } else if (mode == "bad-version") {
      write_bytes(s, hello_frame(token, 99));
      report_answer(s);
    } else if (mode == "bad-token") {
      write_bytes(s, hello_frame("not-the-token", transport::kProtocolVersion));
      report_answer(s);
    } else if (mode == "bad-tensor" || mode == "disconnect-mid-round" || mode == "partial-reply") {
      write_bytes(s, hello_frame(token, transport::kProtocolVersion));
      return play_worker(s, mode);
    } else {
      std::cerr << "unknown mode '" << mode << "'\n";
      return 2;
    }
  } catch (const std::exception& e) {
    std::cout << "rogue_worker: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
