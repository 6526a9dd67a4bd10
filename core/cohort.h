// Cohort: the connected workers, as the coordinator's strategy sees them.
//
// (Cohort is the interface; TcpCohort is the network implementation described here and
// LocalCohort, core/local_cohort.h, the in-process one for tests.)
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

class StopSignal;

namespace transport::tcp {
struct Endpoint;
class TlsContext;
}

using WorkerId = uint64_t;
using Clock = std::chrono::steady_clock;
using Seconds = std::chrono::duration<double>;  // Seconds(Clock::now() - t0).count()
using Deadline = Clock::time_point;

struct WorkerInfo {
  WorkerId id = 0;
  std::string name;
  std::string address;
  std::string certificate;  // subject of the TLS certificate it presented ("" if none)
  // HOST:PORT of its peer port, for worker-to-worker links (core/peer.h); "" if it has none.
  std::string peer_address;
  int64_t num_examples = 0;
  std::vector<int64_t> label_histogram;
};

// True when there are at least two workers and every one reported a peer port: they can link
// directly (a strategy's topology=auto then leaves the coordinator out of the data path).
bool can_link(const std::vector<WorkerInfo>& workers);

struct Instruction {
  WorkerId worker;
  Message message;
};

// Asks the workers to link directly (core/peer.h): each instruction's run request gets options
// "peers" (`members`' names and peer addresses, in rank order) and "session"; the worker side is
// join_links(). Throws, naming `what` (e.g. "gradsum topology=ring") and the worker, when a
// member reported no peer port.
void ask_to_link(std::vector<Instruction>& instructions, const std::vector<WorkerInfo>& members, uint64_t session,
                 const std::string& what);

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
  // The app's stop request (SIGINT/SIGTERM, core/stop.h): waits end when it is set. Null: none.
  std::shared_ptr<StopSignal> stop;
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

// The interface strategies program against. TcpCohort (below) is the real one; LocalCohort
// (core/local_cohort.h) runs worker halves on threads of the same process, for fast tests of a
// strategy's two halves without sockets.
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

// The coordinator's network side over TCP (optionally TLS): the listening socket, handshakes,
// liveness, request/reply matching with deadlines, the receive budget.
class TcpCohort : public Cohort {
 public:
  explicit TcpCohort(CohortConfig config);
  ~TcpCohort() override;
  TcpCohort(const TcpCohort&) = delete;
  TcpCohort& operator=(const TcpCohort&) = delete;

  std::string local_address() const override;
  size_t size() const override;
  std::vector<WorkerInfo> workers() const override;
  bool wait_for_workers(size_t n, Deadline deadline) override;
  std::vector<Failure> exchange(std::vector<Instruction> instructions, const Exchange& handlers) override;
  bool post(WorkerId worker, const Message& message) override;
  void cancel(WorkerId worker, const std::string& reason) override;
  void shutdown(const std::string& reason, std::chrono::milliseconds grace) override;
  uint64_t bytes_up() const override;
  uint64_t bytes_down() const override;
  std::vector<WorkerBytes> bytes_by_worker() const override;
  uint64_t peak_receive_bytes() const override;
  bool stop_requested() const override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

std::string describe_failures(const std::vector<Failure>& failures);

// A seed for one worker in one round that does not depend on connection order: FNV-1a of the
// worker's name mixed with the job seed and the round; below 2^63.
uint64_t worker_seed(uint64_t job_seed, uint32_t round, const std::string& worker_name);

}  // namespace fedra
