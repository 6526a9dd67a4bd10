#include "tests/testing.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <mutex>
#include <thread>

#include <torch/torch.h>

#include "core/data/batching.h"
#include "core/kit/registry.h"
#include "core/net/protocol.h"
#include "core/net/tcp_cohort.h"
#include "core/runtime/worker.h"
#include "tests/test_util.h"
#include "transport/tcp/connection.h"

using namespace fedra;
namespace tcp = fedra::transport::tcp;
using fedra::test::contains;

namespace {

enum class Behaviour { kReply, kReplyError, kDropOnRequest, kSilent, kReplyWrongVersion };

// A worker on its own thread speaking the protocol through a BlockingChannel. It records the
// first error the coordinator sent it, if any.
class FakeWorker {
 public:
  using Tweak = std::function<void(Message&)>;
  FakeWorker(const std::string& address, std::string name, Behaviour behaviour,
             uint32_t version = transport::kProtocolVersion, std::string token = "", Tweak tweak = {})
      : thread_([=] { run(address, name, behaviour, version, token, tweak); }) {}
  ~FakeWorker() { thread_.join(); }
  std::string refusal() {
    std::lock_guard<std::mutex> lock(mu_);
    return refusal_;
  }

 private:
  void run(const std::string& address, const std::string& name, Behaviour behaviour,
           uint32_t version, const std::string& token, const Tweak& tweak) {
    try {
      auto ch = tcp::BlockingChannel::connect(tcp::parse_endpoint(address), transport::Limits{},
                                              std::chrono::seconds(5));
      Message hello(protocol::kHello);
      hello.sender = name;
      hello.metrics["num_examples"] = 10;
      if (!token.empty()) hello.options["token"] = token;
      if (tweak) tweak(hello);
      transport::Envelope env = to_envelope(hello);
      env.version = version;
      ch->send(env);
      for (;;) {
        transport::Envelope in = ch->receive(std::chrono::seconds(20));
        if (in.kind == protocol::kError) {
          std::lock_guard<std::mutex> lock(mu_);
          if (refusal_.empty()) refusal_ = in.error ? in.error->message : "?";
          if (in.request_id == 0) return;  // the connection is refused or dropped
          continue;                        // about one request (refused or expired): stay, as workers do
        }
        if (in.kind == protocol::kWelcome) continue;
        if (in.kind == protocol::kShutdown) return;
        transport::Envelope out;
        out.request_id = in.request_id;
        out.sender = name;
        switch (behaviour) {
          case Behaviour::kReply:
            out.kind = "answer";
            out.metrics = {{"value", static_cast<double>(in.round)}};
            ch->send(out);
            break;
          case Behaviour::kReplyError:
            out.kind = protocol::kError;
            out.error = transport::WireError{ErrorKind::kFailed, "out of memory on the worker"};
            ch->send(out);
            break;
          case Behaviour::kDropOnRequest:
            return;  // the channel closes with the thread's scope
          case Behaviour::kSilent:
            break;
          case Behaviour::kReplyWrongVersion:
            out.kind = "answer";
            out.version = 99;
            ch->send(out);
            break;
        }
      }
    } catch (const fedra::Error&) {
      // The coordinator closed the connection: the end of every fake worker's life.
    }
  }

  std::mutex mu_;
  std::string refusal_;  // REQUIRES: mu_ held
  std::thread thread_;
};

CohortConfig config(std::string token = "") {
  CohortConfig c;
  c.listen = "127.0.0.1:0";
  c.token = std::move(token);
  c.job.strategy = "test";
  c.job.model = "mlp:4-2";
  return c;
}

Deadline in(double seconds) {
  return Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
}

}  // namespace

TEST_CASE("workers are admitted after their hello and sampled reproducibly") {
  TcpCohort cohort(config());
  std::vector<std::unique_ptr<FakeWorker>> workers;
  for (int i = 0; i < 5; ++i) {
    workers.push_back(std::make_unique<FakeWorker>(cohort.local_address(), "w" + std::to_string(i),
                                                   Behaviour::kReply));
  }
  REQUIRE(cohort.wait_for_workers(5, in(10)));
  CHECK(cohort.size() == 5);
  CHECK(cohort.workers().front().num_examples == 10);
  CHECK(cohort.sample(0.4, 1, 9) == cohort.sample(0.4, 1, 9));
  CHECK(cohort.sample(0.4, 1, 9).size() == 2);
  CHECK(cohort.sample(0.4, 4, 9).size() == 4);
  CHECK(cohort.sample(1.0, 1, 9).size() == 5);
  CHECK(cohort.sample(0.01, 1, 9).size() == 1);
  bool draws_differ = false;
  for (uint64_t s = 0; s < 20 && !draws_differ; ++s) draws_differ = cohort.sample(0.4, 1, s) != cohort.sample(0.4, 1, 9);
  CHECK(draws_differ);
  cohort.shutdown("test over", std::chrono::seconds(2));
}

TEST_CASE("a wrong protocol version or token is refused with a message naming it") {
  TcpCohort cohort(config("s3cret"));
  auto old_version = std::make_unique<FakeWorker>(cohort.local_address(), "old", Behaviour::kReply, 99, "s3cret");
  auto intruder = std::make_unique<FakeWorker>(cohort.local_address(), "intruder", Behaviour::kReply,
                                               transport::kProtocolVersion, "guess");
  auto good = std::make_unique<FakeWorker>(cohort.local_address(), "good", Behaviour::kReply,
                                           transport::kProtocolVersion, "s3cret");
  REQUIRE(cohort.wait_for_workers(1, in(10)));
  // Serve the refusals too, then check what each side saw.
  cohort.wait_for_workers(3, in(1));
  CHECK(cohort.size() == 1);
  CHECK(cohort.workers().front().name == "good");
  cohort.shutdown("test over", std::chrono::seconds(2));
  old_version.reset();
  intruder.reset();
  good.reset();
}

TEST_CASE("refusal messages reach the refused worker") {
  TcpCohort cohort(config("s3cret"));
  FakeWorker old_version(cohort.local_address(), "old", Behaviour::kReply, 99, "s3cret");
  FakeWorker intruder(cohort.local_address(), "intruder", Behaviour::kReply, transport::kProtocolVersion, "guess");
  for (int i = 0; i < 100 && (old_version.refusal().empty() || intruder.refusal().empty()); ++i) {
    cohort.wait_for_workers(1, in(0.05));
  }
  CHECK(old_version.refusal() ==
        "protocol version mismatch: the worker speaks protocol 99, this coordinator speaks "
        "protocol 2; run the same Fedra release on both sides");
  CHECK(intruder.refusal().find("authentication failed") == 0);
  CHECK(cohort.size() == 0);
}

TEST_CASE("request_all delivers replies and turns errors, disconnects and silence into failures") {
  TcpCohort cohort(config());
  FakeWorker good(cohort.local_address(), "good", Behaviour::kReply);
  FakeWorker failing(cohort.local_address(), "failing", Behaviour::kReplyError);
  FakeWorker dropping(cohort.local_address(), "dropping", Behaviour::kDropOnRequest);
  FakeWorker silent(cohort.local_address(), "silent", Behaviour::kSilent);
  REQUIRE(cohort.wait_for_workers(4, in(10)));
  std::vector<Instruction> ins;
  for (const auto& w : cohort.workers()) ins.push_back({w.id, Message("question", 5)});
  std::vector<std::string> replied;
  const auto t0 = Clock::now();
  const auto failures = cohort.request_all(std::move(ins), in(1.0), [&](const WorkerInfo& w, Message&& m) {
    replied.push_back(w.name);
    CHECK(m.metric("value") == 5);
  });
  CHECK(Clock::now() - t0 < std::chrono::seconds(3));
  CHECK(replied == std::vector<std::string>{"good"});
  REQUIRE(failures.size() == 3);
  std::map<std::string, Failure> by_name;
  for (const auto& f : failures) by_name[f.name] = f;
  CHECK(by_name["failing"].kind == ErrorKind::kFailed);
  CHECK(by_name["failing"].message == "worker failing reported: out of memory on the worker");
  CHECK(by_name["dropping"].kind == ErrorKind::kDisconnected);
  CHECK(by_name["silent"].kind == ErrorKind::kOverloaded);
  // The connected workers stay usable: the next request to the good one succeeds.
  WorkerId good_id = 0;
  for (const auto& w : cohort.workers()) {
    if (w.name == "good") good_id = w.id;
  }
  CHECK(cohort.request(good_id, Message("question", 6), in(5)).metric("value") == 6);
  CHECK(cohort.size() == 3);  // "dropping" is gone
  cohort.shutdown("test over", std::chrono::seconds(2));
}

TEST_CASE("a reply the strategy rejects becomes that worker's failure") {
  TcpCohort cohort(config());
  FakeWorker a(cohort.local_address(), "a", Behaviour::kReply);
  FakeWorker b(cohort.local_address(), "b", Behaviour::kReply);
  REQUIRE(cohort.wait_for_workers(2, in(10)));
  std::vector<Instruction> ins;
  for (const auto& w : cohort.workers()) ins.push_back({w.id, Message("question", 1)});
  int accepted = 0;
  const auto failures = cohort.request_all(std::move(ins), in(5), [&](const WorkerInfo& w, Message&&) {
    FEDRA_REQUIRE(w.name != "b", "update from b holds NaN");
    ++accepted;
  });
  CHECK(accepted == 1);
  REQUIRE(failures.size() == 1);
  CHECK(failures[0].name == "b");
  CHECK(failures[0].message == "update from b holds NaN");
  CHECK(cohort.bytes_up() > 0);
  CHECK(cohort.bytes_down() > 0);
  cohort.shutdown("test over", std::chrono::seconds(2));
}

TEST_CASE("worker seeds depend on name, job seed and round, never on connection order") {
  CHECK(worker_seed(1, 3, "worker-2") == worker_seed(1, 3, "worker-2"));
  CHECK(worker_seed(1, 3, "worker-2") != worker_seed(1, 3, "worker-3"));
  CHECK(worker_seed(1, 3, "worker-2") != worker_seed(1, 4, "worker-2"));
  CHECK(worker_seed(1, 3, "worker-2") != worker_seed(2, 3, "worker-2"));
  for (uint32_t r = 0; r < 1000; ++r) {
    CHECK(worker_seed(7, r, "w") < (uint64_t{1} << 63));  // fits the int64 options parse into
  }
}

TEST_CASE("hellos that would corrupt the cohort are refused, naming the field: duplicate name, count, histogram") {
  TcpCohort cohort(config(""));
  const auto histogram = [](std::vector<int64_t> h) {
    return [h](Message& m) { m.tensors.emplace_back("label_histogram", torch::tensor(h, at::kLong)); };
  };
  FakeWorker first(cohort.local_address(), "twin", Behaviour::kSilent, transport::kProtocolVersion, "",
                   histogram({4, 6}));
  REQUIRE(cohort.wait_for_workers(1, in(5)));
  FakeWorker twin(cohort.local_address(), "twin", Behaviour::kReply);
  FakeWorker uncounted(cohort.local_address(), "uncounted", Behaviour::kReply, transport::kProtocolVersion, "",
                       [](Message& m) { m.metrics.erase("num_examples"); });
  FakeWorker fractional(cohort.local_address(), "fractional", Behaviour::kReply, transport::kProtocolVersion, "",
                        [](Message& m) { m.metrics["num_examples"] = 2.5; });
  FakeWorker wrong_sum(cohort.local_address(), "wrong-sum", Behaviour::kReply, transport::kProtocolVersion, "",
                       histogram({3, 3}));
  FakeWorker negative(cohort.local_address(), "negative", Behaviour::kReply, transport::kProtocolVersion, "",
                      histogram({11, -1}));
  FakeWorker other_classes(cohort.local_address(), "other-classes", Behaviour::kReply, transport::kProtocolVersion,
                           "", histogram({5, 3, 2}));
  const std::vector<FakeWorker*> refused = {&twin, &uncounted, &fractional, &wrong_sum, &negative, &other_classes};
  const auto all_refused = [&] {
    return std::all_of(refused.begin(), refused.end(), [](FakeWorker* w) { return !w->refusal().empty(); });
  };
  for (int i = 0; i < 200 && !all_refused(); ++i) cohort.wait_for_workers(100, in(0.05));
  CHECK(contains(twin.refusal(), "a worker named 'twin' is already connected (from 127.0.0.1:"));
  CHECK(contains(twin.refusal(), "give each worker its own --name"));
  CHECK(uncounted.refusal() == "hello lacks the metric 'num_examples' (the worker's count of training examples)");
  CHECK(fractional.refusal() == "hello: num_examples must be a whole number >= 0, got 2.5");
  CHECK(wrong_sum.refusal() == "hello: label_histogram counts 6 examples but num_examples is 10");
  CHECK(negative.refusal() == "hello: label_histogram has -1 examples of class 1");
  CHECK(other_classes.refusal() ==
        "hello: label_histogram has 3 classes, but worker twin's has 2: the workers hold different datasets");
  CHECK(cohort.size() == 1);
  CHECK(cohort.workers().front().label_histogram == std::vector<int64_t>{4, 6});
  cohort.shutdown("test over", std::chrono::seconds(2));
}

TEST_CASE("a reply the strategy refuses goes back to its worker as an error naming the request and the reason") {
  TcpCohort cohort(config());
  FakeWorker worker(cohort.local_address(), "w0", Behaviour::kReply);
  REQUIRE(cohort.wait_for_workers(1, in(5)));
  const WorkerId id = cohort.workers().front().id;
  const auto failures = cohort.request_all({{id, Message("ask", 3)}}, in(5), [](const WorkerInfo&, Message&&) {
    FEDRA_FAIL("rejected update from w0: tensor 'w' is float32[3] but the model has float32[2]");
  });
  REQUIRE(failures.size() == 1);
  CHECK(contains(failures[0].message, "tensor 'w' is float32[3]"));
  for (int i = 0; i < 100 && worker.refusal().empty(); ++i) cohort.wait_for_workers(100, in(0.05));
  CHECK(worker.refusal() == "rejected update from w0: tensor 'w' is float32[3] but the model has float32[2]");
  cohort.shutdown("test over", std::chrono::seconds(2));
}

TEST_CASE("a worker dropped mid-job for a protocol error is neither listed nor sampled again") {
  TcpCohort cohort(config());
  FakeWorker good(cohort.local_address(), "good", Behaviour::kReply);
  FakeWorker stale(cohort.local_address(), "stale", Behaviour::kReplyWrongVersion);
  REQUIRE(cohort.wait_for_workers(2, in(5)));
  std::vector<Instruction> ask;
  for (const auto& w : cohort.workers()) ask.push_back({w.id, Message("ask", 1)});
  const auto failures = cohort.request_all(std::move(ask), in(5), [](const WorkerInfo&, Message&&) {});
  REQUIRE(failures.size() == 1);
  CHECK(failures[0].name == "stale");
  CHECK(contains(failures[0].message, "protocol version 99 in a message from stale"));
  CHECK(cohort.size() == 1);  // at once, not only once its connection has closed
  CHECK(cohort.workers().front().name == "good");
  CHECK(cohort.sample(1.0, 1, 3).size() == 1);
  for (int i = 0; i < 100 && stale.refusal().empty(); ++i) cohort.wait_for_workers(100, in(0.05));
  CHECK(contains(stale.refusal(), "protocol version 99"));
  cohort.shutdown("test over", std::chrono::seconds(2));
}

namespace {

// A listening socket on 127.0.0.1 that plays a broken coordinator by hand.
struct RawServer {
  int fd = -1;
  int port = 0;
  RawServer() {
    fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
    REQUIRE(::listen(fd, 1) == 0);
    socklen_t len = sizeof(a);
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    port = ntohs(a.sin_port);
  }
  ~RawServer() { ::close(fd); }
};

// Everything the peer sends until it closes (or 10 s pass).
std::vector<std::byte> read_all(int conn) {
  timeval tv{10, 0};
  ::setsockopt(conn, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  std::vector<std::byte> out;
  std::byte buf[4096];
  for (;;) {
    const ssize_t n = ::recv(conn, buf, sizeof(buf), 0);
    if (n <= 0) return out;
    out.insert(out.end(), buf, buf + n);
  }
}

}  // namespace

TEST_CASE("a worker sent a malformed frame tells the coordinator why before it hangs up") {
  RawServer server;
  WorkerConfig c;
  c.coordinator = fmt::format("127.0.0.1:{}", server.port);
  c.name = "w";
  c.dataset = "synthetic:n=20,features=4,classes=2";
  c.connect_timeout = std::chrono::seconds(5);
  c.handshake_timeout = std::chrono::seconds(5);
  StrategyRegistry registry;
  int code = -1;
  std::thread worker([&] { code = run_worker(c, registry); });
  const int conn = ::accept(server.fd, nullptr, nullptr);
  REQUIRE(conn >= 0);
  // Let the hello arrive, then send a frame whose header is fine and whose body is garbage: one
  // segment of 2 words, all 0xFF (a far pointer to nowhere).
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  uint32_t header[2] = {0, 2};
  uint8_t body[16];
  std::memset(body, 0xFF, sizeof(body));
  REQUIRE(::send(conn, header, sizeof(header), 0) == sizeof(header));
  REQUIRE(::send(conn, body, sizeof(body), 0) == sizeof(body));
  const std::vector<std::byte> got = read_all(conn);
  ::close(conn);
  worker.join();
  CHECK(code == 1);
  // The stream holds the hello, then the worker's error: decode frame after frame.
  transport::Limits limits;
  size_t at = 0;
  std::vector<transport::Envelope> frames;
  while (at + 8 <= got.size()) {
    const uint64_t table = transport::frame_table_bytes(got.data() + at, limits);
    const auto h = transport::parse_frame_header(got.data() + at, table, limits);
    const size_t size = h.total_bytes();
    REQUIRE(at + size <= got.size());
    frames.push_back(transport::decode(transport::InFrame::from_bytes(got.data() + at, size, limits), limits));
    at += size;
  }
  REQUIRE(frames.size() == 2);
  CHECK(frames[0].kind == protocol::kHello);
  CHECK(frames[1].kind == protocol::kError);
  REQUIRE(frames[1].error.has_value());
  CHECK(contains(frames[1].error->message, "worker w hangs up: malformed frame"));
}
