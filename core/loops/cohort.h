// Cohort: the connected workers, as a coordinator half sees them; the interface every strategy's
// coordinator half programs against.
//
// Strategies use it like a function call:
//
//   auto failures = cohort.request_all(instructions, deadline, [&](const WorkerInfo& w, Message&& r) {
//     aggregate(r);  // runs as each reply arrives; the frame buffer is freed when it returns
//   });
//
// Implementations: TcpCohort (core/net/tcp_cohort.h), the coordinator's network side, and
// LocalCohort (tests/support/local_cohort.h), worker halves on threads of the test's process.
//
// Threading: a Cohort does its work only inside its own calls (request_all, exchange, request,
// wait_for_workers, shutdown), on the caller's thread, so reply handlers run on the strategy's
// thread with no hand-off and no locks.
//
// Failures: a worker that disconnects, misses the deadline, sends a malformed reply, replies with
// an error, or whose reply the handler rejects (by throwing fedra::Error) becomes a Failure in the
// returned list; the other workers' requests go on.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/kit/message.h"
#include "core/kit/strategy.h"

namespace fedra {

using WorkerId = uint64_t;
using Clock = std::chrono::steady_clock;
using Seconds = std::chrono::duration<double>;  // Seconds(Clock::now() - t0).count()
using Deadline = Clock::time_point;

struct WorkerInfo {
  WorkerId id = 0;
  std::string name;
  std::string address;
  std::string certificate;  // subject of the TLS certificate it presented ("" if none)
  // HOST:PORT of its peer port, for worker-to-worker links (core/net/peer.h); "" if it has none.
  std::string peer_address;
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
  // Called when the deadline passes with requests still pending: a strategy with steps (secure
  // aggregation) cancels the late workers and goes on; returning true keeps the exchange running
  // (with the deadline read again), false (or no handler) fails every pending request.
  std::function<bool()> on_deadline;
};

class Cohort {
 public:
  using ReplyHandler = std::function<void(const WorkerInfo&, Message&&)>;

  virtual ~Cohort() = default;

  // "HOST:PORT" actually bound (the port resolved when 0 was asked for).
  virtual std::string local_address() const = 0;

  virtual size_t size() const = 0;                     // workers past the handshake
  virtual std::vector<WorkerInfo> workers() const = 0;  // sorted by id
  // Sorted by name: the order strategies give ranks, stages and turns in, which does not depend
  // on the order the workers connected in.
  std::vector<WorkerInfo> workers_by_name() const;
  // max(min_count, ceil(fraction * size())) workers, at most size(), drawn with `seed`. The draw
  // depends on the workers' names, not on the order they connected in, so a run with the same
  // worker names and seed picks the same workers.
  std::vector<WorkerId> sample(double fraction, size_t min_count, uint64_t seed) const;

  // Serves connections until `n` workers are ready; false if the deadline passes first.
  virtual bool wait_for_workers(size_t n, Deadline deadline) = 0;
  // Sends every instruction, then calls on_reply for each reply as it arrives, until all have
  // replied or failed or the deadline passes. Returns the failures, in the order they happened.
  std::vector<Failure> request_all(std::vector<Instruction> instructions, Deadline deadline,
                                   const ReplyHandler& on_reply);
  // Like request_all, for requests answered in parts: on_part sees each partial message, and
  // the strategy may post() to the workers while their requests are pending. A throwing
  // on_part or on_reply fails that worker's request (a Failure), not the exchange. Returns when
  // every request has replied or failed, or the deadline passes (the rest then fail).
  virtual std::vector<Failure> exchange(std::vector<Instruction> instructions, const Exchange& handlers) = 0;
  // Sends `message` to `worker` as part of its pending request (Envelope.partial set). Returns
  // false, sending nothing, if the worker has no request pending. Tensors are referenced, not
  // copied, until the frame is written: do not modify them before the worker has answered.
  virtual bool post(WorkerId worker, const Message& message) = 0;
  // Ends the worker's pending request: the worker is sent an error part with `reason` (its
  // strategy sees the exchange cancelled) and the request fails with kFailed. No-op if none.
  virtual void cancel(WorkerId worker, const std::string& reason) = 0;

  // One request; throws Error (kind of the failure) if it fails.
  Message request(WorkerId worker, Message message, Deadline deadline);
  // Tells every worker the job is over, waits up to `grace` for the messages to go out, closes.
  // (Default: nothing to tell.)
  virtual void shutdown(const std::string& reason, std::chrono::milliseconds grace) {
    (void)reason;
    (void)grace;
  }

  // Cumulative frame bytes, over every connection ever made (handshakes included). Default: the
  // sums of bytes_by_worker().
  virtual uint64_t bytes_up() const;    // workers -> coordinator
  virtual uint64_t bytes_down() const;  // coordinator -> workers
  // The same per worker name (every worker that completed the handshake), sorted by name.
  virtual std::vector<WorkerBytes> bytes_by_worker() const = 0;
  virtual uint64_t peak_receive_bytes() const { return 0; }

  // True once the app's StopSignal was requested (SIGINT or SIGTERM); waiting calls then return early.
  virtual bool stop_requested() const { return false; }
};

std::string describe_failures(const std::vector<Failure>& failures);

}  // namespace fedra
