// LocalCohort: a coordinator half and worker halves in one process, without sockets.
//
// For tests of a strategy's two halves (leveldb's memenv, kj::newTwoWayPipe): each worker half
// is built from the registry as a real worker builds it on its welcome, holds its own data and
// runs on a thread of its own in the loop every worker runs (serve(), core/runtime/serve.h),
// over an in-memory transport::Channel, answering the coordinator half through the same Cohort
// interface the TCP cohort implements. Every message is encoded into a Cap'n Proto frame and
// decoded again on the other side (transport/codec.h), so what crosses is exactly what would
// cross the wire, and bytes_up()/bytes_down() count those frames. disconnect() makes a
// worker vanish mid-job as a killed process would. Failures, cancellation, deadlines and posts
// mid-exchange behave as TcpCohort's; only connection handling is absent (workers are there from
// the start). Not for production: threads hand messages over through one mutex.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/data/dataset.h"
#include "core/kit/registry.h"
#include "core/loops/cohort.h"

namespace fedra {

struct LocalWorker {
  std::string name;
  std::shared_ptr<const Dataset> data;  // its private training data (may be null)
  std::shared_ptr<const Dataset> eval_data = nullptr;  // held out for federated evaluation (may be null)
};

class LocalCohort : public Cohort {
 public:
  LocalCohort(const Job& job, const StrategyRegistry& registry, std::vector<LocalWorker> workers);
  ~LocalCohort() override;  // ends the job and joins the worker threads
  LocalCohort(const LocalCohort&) = delete;
  LocalCohort& operator=(const LocalCohort&) = delete;

  // The worker of that name is gone from now on: its pending request fails (kDisconnected), it
  // is no longer listed, and nothing more from it is read.
  void disconnect(const std::string& name);
  // A worker of that name (gone, as after disconnect()) comes back as a restarted process would:
  // a new id, a fresh worker half built from the registry, the same data.
  void rejoin(const std::string& name);

  std::string local_address() const override { return "in-process"; }
  size_t size() const override;
  std::vector<WorkerInfo> workers() const override;
  bool wait_for_workers(size_t n, Deadline deadline) override;
  std::vector<Failure> exchange(std::vector<Instruction> instructions, const Exchange& handlers) override;
  bool post(WorkerId worker, const Message& message) override;
  void cancel(WorkerId worker, const std::string& reason) override;
  // The frames each worker's messages made, both ways (bytes_up/bytes_down are their sums).
  std::vector<WorkerBytes> bytes_by_worker() const override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace fedra
