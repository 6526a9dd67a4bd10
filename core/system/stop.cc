#include "core/system/stop.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <csignal>
#include <cstdint>

#include "core/kit/error.h"

namespace fedra {

namespace {
// The handlers' target: set once by install_stop_handlers, read in the handler.
std::shared_ptr<StopSignal> g_stop;
std::atomic<StopSignal*> g_stop_raw{nullptr};

extern "C" void on_stop_signal(int signo) {
  if (StopSignal* s = g_stop_raw.load()) s->request(signo);
}
}  // namespace

StopSignal::StopSignal() : fd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
  FEDRA_REQUIRE(fd_ >= 0, "cannot create the stop signal's eventfd");
}

StopSignal::~StopSignal() {
  if (fd_ >= 0) ::close(fd_);
}

void StopSignal::request(int signo) noexcept {
  signo_.store(signo);
  requested_.store(true);
  const uint64_t one = 1;
  [[maybe_unused]] const ssize_t n = ::write(fd_, &one, sizeof(one));
}

void StopSignal::fail(const std::string& reason) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (failure_.empty()) failure_ = reason;
  }
  request();
}

std::string StopSignal::failure() const {
  std::lock_guard<std::mutex> lock(mu_);
  return failure_;
}

void install_stop_handlers(std::shared_ptr<StopSignal> stop) {
  g_stop_raw.store(stop.get());
  g_stop = std::move(stop);
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);
}

}  // namespace fedra
