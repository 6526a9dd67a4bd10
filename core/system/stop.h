// StopSignal: the user asked this process to stop (SIGINT, SIGTERM).
//
// The app owns the signal handling: it makes one StopSignal, installs the handlers with
// install_stop_handlers() and hands the object to whatever must react (the TcpCohort wakes its
// event loop for it, so waits end at once; strategies read RunContext::stop_requested). A
// library never installs signal handlers of its own. request() is async-signal-safe: an atomic
// store and a write to an eventfd, which becomes readable once the stop is requested.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>

namespace fedra {

class StopSignal {
 public:
  StopSignal();
  ~StopSignal();
  StopSignal(const StopSignal&) = delete;
  StopSignal& operator=(const StopSignal&) = delete;

  void request(int signo = 0) noexcept;
  // A stop because something went wrong (not from a signal handler): the job ends "failed" with
  // `reason`, not "interrupted". The first reason given is kept.
  void fail(const std::string& reason);
  std::string failure() const;
  bool requested() const noexcept { return requested_.load(); }
  int signal_number() const noexcept { return signo_.load(); }
  // Readable (eventfd counter > 0) once requested; for event loops to wait on.
  int fd() const noexcept { return fd_; }

 private:
  std::atomic<bool> requested_{false};
  std::atomic<int> signo_{0};
  int fd_ = -1;
  mutable std::mutex mu_;
  std::string failure_;  // guarded by mu_
};

// Makes SIGINT and SIGTERM request `stop` (the last one installed wins; it is kept alive).
void install_stop_handlers(std::shared_ptr<StopSignal> stop);

}  // namespace fedra
