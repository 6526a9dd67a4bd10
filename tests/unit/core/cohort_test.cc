#include "tests/testing.h"

#include <mutex>
#include <thread>

#include <torch/torch.h>

#include "core/cohort.h"
#include "core/protocol.h"
#include "transport/tcp/connection.h"

using namespace fedra;
namespace tcp = fedra::transport::tcp;

namespace {

enum class Behaviour { kReply, kReplyError, kDropOnRequest, kSilent };

// A worker on its own thread speaking the protocol through a BlockingChannel. It records the
// first error the coordinator sent it, if any.
class FakeWorker {
 public:
  FakeWorker(const std::string& address, std::string name, Behaviour behaviour,
             uint32_t version = transport::kProtocolVersion, std::string token = "")
      : thread_([=] { run(address, name, behaviour, version, token); }) {}
  ~FakeWorker() { thread_.join(); }
  std::string refusal() {
    std::lock_guard<std::mutex> lock(mu_);
    return refusal_;
  }

 private:
  void run(const std::string& address, const std::string& name, Behaviour behaviour,
           uint32_t version, const std::string& token) {
    try {
      auto ch = tcp::BlockingChannel::connect(tcp::parse_endpoint(address), transport::Limits{},
                                              std::chrono::seconds(5));
      Message hello(protocol::kHello);
      hello.sender = name;
      hello.metrics["num_examples"] = 10;
      if (!token.empty()) hello.options["token"] = token;
      transport::Envelope env = to_envelope(hello);
      env.version = version;
      ch->send(env);
      for (;;) {
        transport::Envelope in = ch->receive(std::chrono::seconds(20));
        if (in.kind == protocol::kError) {
          std::lock_guard<std::mutex> lock(mu_);
          refusal_ = in.error ? in.error->message : "?";
          return;
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
