#include "tests/testing.h"

#include <cstring>
#include <mutex>
#include <random>
#include <thread>

#include "transport/tcp/connection.h"

using namespace fedra;
using namespace fedra::transport;
using namespace fedra::transport::tcp;

namespace {

// A loopback server on its own thread that runs `on_frame` for every frame of every connection.
class Server {
 public:
  using Handler = std::function<void(Connection&, InFrame)>;
  explicit Server(Handler handler, Limits limits = {})
      : limits_(limits), handler_(std::move(handler)),
        listener_(io_, Endpoint{"127.0.0.1", 0}, [this](asio::ip::tcp::socket s) {
          auto c = Connection::create(std::move(s), limits_);
          conns_.push_back(c);
          Connection* raw = c.get();
          c->start([this, raw](InFrame f) { handler_(*raw, std::move(f)); },
                   [this](const Error& e) {
                     std::lock_guard<std::mutex> lock(mu_);
                     last_close_ = e.what();
                   });
        }),
        thread_([this] {
          auto guard = asio::make_work_guard(io_);
          io_.run();
        }) {}
  ~Server() {
    io_.stop();
    thread_.join();
  }
  Endpoint endpoint() const { return listener_.local_endpoint(); }
  // The reason the last connection closed, waiting up to 2 s for one.
  std::string last_close() {
    for (int i = 0; i < 200; ++i) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (!last_close_.empty()) return last_close_;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return {};
  }

 private:
  asio::io_context io_;
  Limits limits_;
  Handler handler_;
  std::vector<std::shared_ptr<Connection>> conns_;
  std::mutex mu_;
  std::string last_close_;  // REQUIRES: mu_ held
  Listener listener_;
  std::thread thread_;
};

// Reads every byte until the peer closes.
std::vector<std::byte> read_all(asio::ip::tcp::socket& s) {
  std::vector<std::byte> out;
  std::byte buf[4096];
  asio::error_code ec;
  for (;;) {
    const size_t n = s.read_some(asio::buffer(buf), ec);
    out.insert(out.end(), buf, buf + n);
    if (ec) break;
  }
  return out;
}

// A server's handler that decodes each frame and sends the same envelope back.
void echo(Connection& c, InFrame f) {
  Envelope env = decode(f, c.limits());
  c.send(encode(env, c.limits()));
}

}  // namespace

TEST_CASE("parse_endpoint accepts HOST:PORT and names what is wrong otherwise") {
  CHECK(parse_endpoint("127.0.0.1:7000").port == 7000);
  CHECK(parse_endpoint("[::1]:80").host == "::1");
  CHECK(parse_endpoint("example.org:0").host == "example.org");
  CHECK_THROWS_WITH_AS(parse_endpoint("localhost"), doctest::Contains("expected HOST:PORT"), fedra::Error);
  CHECK_THROWS_WITH_AS(parse_endpoint("h:70000"), doctest::Contains("not a port number"), fedra::Error);
  CHECK_THROWS_WITH_AS(parse_endpoint("h:7x"), doctest::Contains("not a port number"), fedra::Error);
}

TEST_CASE("a receive budget holds back bodies that do not fit until memory is released") {
  ReceiveBudget budget(100);
  std::vector<int> started;
  budget.acquire(60, [&] { started.push_back(1); });
  budget.acquire(60, [&] { started.push_back(2); });
  budget.acquire(30, [&] { started.push_back(3); });
  CHECK(started == std::vector<int>{1});
  budget.release(60);
  CHECK(started == std::vector<int>{1, 2, 3});
  CHECK(budget.in_use() == 90);
  CHECK(budget.peak() == 90);
  budget.release(90);
  budget.acquire(500, [&] { started.push_back(4); });  // larger than the budget: alone is fine
  CHECK(started.back() == 4);
}

TEST_CASE("frames cross loopback TCP whole, in order, and every byte is counted") {
  Server server(echo);
  auto client = BlockingChannel::connect(server.endpoint(), Limits{}, std::chrono::seconds(5));
  const uint64_t n = 10 << 20;
  auto data = allocate_aligned(n);
  for (uint64_t i = 0; i < n; ++i) data.get()[i] = static_cast<std::byte>(i * 7);
  uint64_t frame_bytes = 0;
  for (uint32_t i = 1; i <= 3; ++i) {
    Envelope env;
    env.kind = "echo";
    env.round = i;
    env.tensors.push_back(TensorData{"w", DType::kUInt8, {static_cast<int64_t>(n)}, data.get(), n});
    frame_bytes += encode(env, Limits{}).size_bytes();
    client->send(env);
  }
  for (uint32_t i = 1; i <= 3; ++i) {
    Envelope got = client->receive(std::chrono::seconds(10));
    CHECK(got.round == i);
    REQUIRE(got.tensors.size() == 1);
    CHECK(std::memcmp(got.tensors[0].data, data.get(), n) == 0);
  }
  CHECK(client->bytes_sent() == frame_bytes);
  CHECK(client->bytes_received() == frame_bytes);
}

TEST_CASE("a peer that sends random bytes gets an error frame naming the problem") {
  Server server([](Connection&, InFrame) {});
  asio::io_context io;
  asio::ip::tcp::socket s = connect_with_retry(io, server.endpoint(), std::chrono::seconds(5));
  std::vector<std::byte> junk(4096);
  std::mt19937 rng(7);
  for (auto& b : junk) b = static_cast<std::byte>(rng() | 0x80);  // a huge segment count
  asio::write(s, asio::buffer(junk));
  const auto reply = read_all(s);
  const Envelope env = decode(InFrame::from_bytes(reply.data(), reply.size(), Limits{}), Limits{});
  CHECK(env.kind == "error");
  REQUIRE(env.error.has_value());
  CHECK(env.error->message.find("segments, the limit is") != std::string::npos);
}

TEST_CASE("a frame over the receiver's size cap is refused with the limit named") {
  Limits small;
  small.max_frame_bytes = 64 * 1024;
  Server server([](Connection&, InFrame) {}, small);
  auto client = BlockingChannel::connect(server.endpoint(), Limits{}, std::chrono::seconds(5));
  auto data = allocate_aligned(1 << 20);
  std::memset(data.get(), 1, 1 << 20);
  Envelope env;
  env.kind = "big";
  env.tensors.push_back(TensorData{"w", DType::kUInt8, {1 << 20}, data.get(), 1 << 20});
  // The refusal arrives while the frame is still being written (send reports it) or after
  // (receive returns it); either way the reason names the limit.
  std::string reason;
  try {
    client->send(env);
    const Envelope reply = client->receive(std::chrono::seconds(10));
    CHECK(reply.kind == "error");
    REQUIRE(reply.error.has_value());
    reason = reply.error->message;
  } catch (const fedra::Error& e) {
    reason = e.what();
  }
  CHECK(reason.find("exceeds the frame limit of 65536 bytes") != std::string::npos);
}

TEST_CASE("a truncated frame followed by a close is reported as such") {
  Server server([](Connection&, InFrame) {});
  asio::io_context io;
  {
    asio::ip::tcp::socket s = connect_with_retry(io, server.endpoint(), std::chrono::seconds(5));
    Envelope env;
    env.kind = "hello";
    env.sender = "half";
    const auto bytes = encode(env, Limits{}).to_bytes();
    asio::write(s, asio::buffer(bytes.data(), bytes.size() / 2));
  }
  CHECK(server.last_close().find("truncated frame") != std::string::npos);
}

TEST_CASE("receive gives up at its timeout with an Overloaded error") {
  Server server([](Connection&, InFrame) {});
  auto client = BlockingChannel::connect(server.endpoint(), Limits{}, std::chrono::seconds(5));
  try {
    client->receive(std::chrono::milliseconds(100));
    FAIL("receive returned without a message");
  } catch (const fedra::Error& e) {
    CHECK(e.kind() == ErrorKind::kOverloaded);
  }
}

TEST_CASE("connecting to a port nobody listens on fails with the endpoint named") {
  asio::io_context io;
  Endpoint nowhere;
  {
    asio::ip::tcp::acceptor a(io, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    nowhere = Endpoint{"127.0.0.1", a.local_endpoint().port()};
  }
  CHECK_THROWS_WITH_AS(connect_with_retry(io, nowhere, std::chrono::milliseconds(300)),
                       doctest::Contains(nowhere.to_string().c_str()), fedra::Error);
}

TEST_CASE("frames of every size around the low-water-mark thresholds arrive whole, back to back") {
  Server server(echo);
  auto client = BlockingChannel::connect(server.endpoint(), Limits{}, std::chrono::seconds(5));
  const uint64_t mib = 1 << 20;
  const std::vector<uint64_t> sizes = {8,           4 * mib - 64, 4 * mib,      4 * mib + 8, 5 * mib + 24,
                                       mib - 8,     mib,          mib + 8,      9 * mib + 16, 16};
  auto data = allocate_aligned(10 * mib);
  for (uint64_t i = 0; i < 10 * mib; ++i) data.get()[i] = static_cast<std::byte>(i * 13 + 5);
  for (uint64_t n : sizes) {
    Envelope env;
    env.kind = "echo";
    env.tensors.push_back(TensorData{"w", DType::kUInt8, {static_cast<int64_t>(n)}, data.get(), n});
    client->send(env);
  }
  for (uint64_t n : sizes) {
    CAPTURE(n);
    Envelope got = client->receive(std::chrono::seconds(10));
    REQUIRE(got.tensors.size() == 1);
    CHECK(got.tensors[0].nbytes == n);
    CHECK(std::memcmp(got.tensors[0].data, data.get(), n) == 0);
  }
}
