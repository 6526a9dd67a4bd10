// TcpCohort: the coordinator's network side over TCP (optionally TLS), the Cohort
// (core/loops/cohort.h) a coordinator process runs its strategy on.
//
// It owns the listening socket, the handshake of each new connection (protocol version, token,
// data summary, then the job in "welcome"), liveness, and request/reply matching with
// per-request deadlines. It runs its io_context only inside its own calls, on the caller's
// thread: between calls nothing is read; peers wait in TCP buffers, and workers that connect
// meanwhile are handled at the next call. Connections that fail the handshake are answered with
// an error naming the problem and closed; the cohort keeps serving the others.
//
// Memory: incoming frame bodies share one receive budget (CohortConfig::receive_budget_bytes), so
// the coordinator holds O(budget) bytes of replies at once however many workers reply together.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/loops/cohort.h"
#include "transport/codec.h"

namespace fedra {

class StopSignal;

namespace transport::tcp {
class TlsContext;
}

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
  // The app's stop request (SIGINT/SIGTERM, core/system/stop.h): waits end when it is set. Null: none.
  std::shared_ptr<StopSignal> stop;
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

}  // namespace fedra
