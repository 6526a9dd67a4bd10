// Cohort: the connected workers, as the coordinator's strategy sees them.
//
// The Cohort owns the coordinator's network side: the listening socket, the handshake of each
// new connection (protocol version, token, data summary, then the job in "welcome"), liveness,
// and request/reply matching with per-request deadlines. Strategies use it like a function call:
//
//   auto failures = cohort.request_all(instructions, deadline, [&](const WorkerInfo& w, Message&& r) {
//     aggregate(r);  // runs as each reply arrives; the frame buffer is freed when it returns
//   });
//
// Threading: the Cohort runs its io_context only inside its own calls (request_all, request,
// wait_for_workers, shutdown), on the caller's thread, so reply handlers run on the
// strategy's thread with no hand-off and no locks. Between calls nothing is read; peers wait in
// TCP buffers, and workers that connect meanwhile are handled at the next call.
//
// Failures: a worker that disconnects, misses the deadline, sends a malformed reply, replies with
// an error, or whose reply the handler rejects (by throwing fedra::Error) becomes a Failure in the
// returned list; the other workers' requests go on. Connections that fail the handshake are
// answered with an error naming the problem and closed; the Cohort keeps serving the others.
//
// Memory: incoming frame bodies share one receive budget (CohortConfig::receive_budget_bytes), so
// the coordinator holds O(budget) bytes of replies at once however many workers reply together.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/message.h"
#include "core/strategy.h"
#include "transport/codec.h"

namespace fedra {

namespace transport::tcp {
struct Endpoint;
class TlsContext;
}

using WorkerId = uint64_t;
using Clock = std::chrono::steady_clock;
using Deadline = Clock::time_point;

struct WorkerInfo {
  WorkerId id = 0;
  std::string name;
  std::string address;
  std::string certificate;  // subject of the TLS certificate it presented ("" if none)
  int64_t num_examples = 0;
  std::vector<int64_t> label_histogram;
};

struct Instruction {
  WorkerId worker;
  Message message;
};

struct Failure {
  WorkerId worker = 0;
  std::string name;
  ErrorKind kind = ErrorKind::kFailed;
  std::string message;
};

struct WorkerBytes {
  std::string name;
  uint64_t up = 0;    // worker -> coordinator
  uint64_t down = 0;  // coordinator -> worker
};

struct CohortConfig {
  std::string listen = "127.0.0.1:0";  // HOST:PORT; port 0 picks a free port
  transport::Limits limits;
  std::string token;  // required from workers when not empty
  // TLS in the server role (transport/tcp/tls.h); null: plain TCP, which is refused on a
  // non-loopback listen address unless `insecure`.
  std::shared_ptr<transport::tcp::TlsContext> tls;
  bool insecure = false;
  std::chrono::milliseconds handshake_timeout{10000};
  uint64_t receive_budget_bytes = uint64_t{512} << 20;
  std::string dump_frames_dir;  // if set, every frame is written there (docs/protocol.md)
  Job job;  // sent to every worker in its welcome
};

// Handlers of an exchange: a request whose answer may come in several parts, with messages going
// both ways while it is pending (gradsum's per-step gradients and sums, split learning's
// micro-batches). All run on the strategy's thread, inside Cohort::exchange.
struct Exchange {
  using Handler = std::function<void(const WorkerInfo&, Message&&)>;
  Handler on_part;   // a partial message (Envelope.partial) of a pending request
  Handler on_reply;  // the final reply; the worker's request is then over
  // Called as each failure happens (the same failures are also returned at the end).
  std::function<void(const Failure&)> on_failure;
  // Read on every wake-up, so a strategy can push it back as progress is made (a per-step
  // deadline). Pending requests fail with kOverloaded when it passes.
  std::function<Deadline()> deadline;
};

class Cohort {
 public:
  using ReplyHandler = std::function<void(const WorkerInfo&, Message&&)>;

  explicit Cohort(CohortConfig config);
  ~Cohort();
  Cohort(const Cohort&) = delete;
  Cohort& operator=(const Cohort&) = delete;

  // "HOST:PORT" actually bound (the port resolved when 0 was asked for).
  std::string local_address() const;

  size_t size() const;                     // workers past the handshake
  std::vector<WorkerInfo> workers() const;  // sorted by id
  // max(min_count, ceil(fraction * size())) workers, at most size(), drawn with `seed`. The draw
  // depends on the workers' names, not on the order they connected in, so a run with the same
  // worker names and seed picks the same workers.
  std::vector<WorkerId> sample(double fraction, size_t min_count, uint64_t seed) const;

  // Serves connections until `n` workers are ready; false if the deadline passes first.
  bool wait_for_workers(size_t n, Deadline deadline);
  // Sends every instruction, then calls on_reply for each reply as it arrives, until all have
  // replied or failed or the deadline passes. Returns the failures, in the order they happened.
  std::vector<Failure> request_all(std::vector<Instruction> instructions, Deadline deadline,
                                   const ReplyHandler& on_reply);
  // Like request_all, for requests answered in parts: on_part sees each partial message, and
  // the strategy may post() to the workers while their requests are pending. A throwing
  // on_part or on_reply fails that worker's request (a Failure), not the exchange. Returns when
  // every request has replied or failed, or the deadline passes (the rest then fail).
  std::vector<Failure> exchange(std::vector<Instruction> instructions, const Exchange& handlers);
  // Sends `message` to `worker` as part of its pending request (Envelope.partial set). Returns
  // false, sending nothing, if the worker has no request pending. Tensors are referenced, not
  // copied, until the frame is written: do not modify them before the worker has answered.
  bool post(WorkerId worker, const Message& message);
  // Ends the worker's pending request: the worker is sent an error part with `reason` (its
  // strategy sees the exchange cancelled) and the request fails with kFailed. No-op if none.
  void cancel(WorkerId worker, const std::string& reason);

  // One request; throws Error (kind of the failure) if it fails.
  Message request(WorkerId worker, Message message, Deadline deadline);
  // Tells every worker the job is over, waits up to `grace` for the messages to go out, closes.
  void shutdown(const std::string& reason, std::chrono::milliseconds grace);

  // Cumulative frame bytes, over every connection ever made (handshakes included).
  uint64_t bytes_up() const;    // workers -> coordinator
  uint64_t bytes_down() const;  // coordinator -> workers
  // The same per worker name (every worker that completed the handshake), sorted by name.
  std::vector<WorkerBytes> bytes_by_worker() const;
  uint64_t peak_receive_bytes() const;

  // True once SIGINT or SIGTERM arrived; waiting calls then return early.
  bool stop_requested() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

std::string describe_failures(const std::vector<Failure>& failures);

// A seed for one worker in one round that does not depend on connection order: FNV-1a of the
// worker's name mixed with the job seed and the round; below 2^63.
uint64_t worker_seed(uint64_t job_seed, uint32_t round, const std::string& worker_name);

}  // namespace fedra
