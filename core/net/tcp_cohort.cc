#include "core/net/tcp_cohort.h"

#include "core/net/tcp_cohort_impl.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <optional>
#include <random>

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <asio/posix/stream_descriptor.hpp>
#include <openssl/rand.h>

#include "core/net/peer.h"
#include "core/net/protocol.h"
#include "core/system/stop.h"
#include "transport/tcp/connection.h"
#include "transport/tcp/tls.h"

namespace fedra {

std::string random_key() {
  unsigned char bytes[16];
  FEDRA_REQUIRE(RAND_bytes(bytes, sizeof(bytes)) == 1, "no randomness for the job's peer key");
  std::string out;
  for (unsigned char b : bytes) out += fmt::format("{:02x}", b);
  return out;
}

TcpCohort::Impl::Impl(CohortConfig c) : config(std::move(c)) {
  peer_key = random_key();
  config.limits.validate();
  budget = std::make_shared<tcp::ReceiveBudget>(config.receive_budget_bytes);
  if (!config.dump_frames_dir.empty()) dumper = std::make_shared<tcp::FrameDumper>(config.dump_frames_dir);
  const tcp::Endpoint endpoint = tcp::parse_endpoint(config.listen);
  FEDRA_REQUIRE(config.tls || config.insecure || tcp::is_loopback_host(endpoint.host),
                "refusing to listen on {} without TLS: anyone who can reach it could join, and "
                "the model and every update would cross the network in clear text. Give "
                "--tls-cert and --tls-key (and --tls-ca for mutual TLS; `fedra certs` makes a "
                "test set), or --insecure on a network you trust",
                config.listen);
  if (config.tls) {
    spdlog::info("{}", config.tls->describe());
  } else if (!tcp::is_loopback_host(endpoint.host)) {
    spdlog::warn("listening on {} without TLS (--insecure): traffic is readable and any host "
                 "that can reach the port may join{}", config.listen,
                 config.token.empty() ? " (and there is no --token)" : "");
  }
  listener = std::make_unique<tcp::Listener>(io, endpoint,
                                             [this](asio::ip::tcp::socket s) { accept(std::move(s)); });
  if (config.stop) {
    const int fd = ::dup(config.stop->fd());
    FEDRA_REQUIRE(fd >= 0, "cannot watch the stop signal");
    stop_watch.emplace(io, fd);
    stop_watch->async_wait(asio::posix::descriptor_base::wait_read, [this](const asio::error_code& ec) {
      if (ec) return;
      stop = true;
      spdlog::warn("received signal {}: stopping now (the round in progress is abandoned)",
                   config.stop->signal_number());
    });
  }
}

TcpCohort::TcpCohort(CohortConfig config) : impl_(std::make_unique<Impl>(std::move(config))) {}

TcpCohort::~TcpCohort() {
  for (auto& [id, m] : impl_->members) {
    impl_->clear_pending(*m);
    m->conn->close(Error(ErrorKind::kDisconnected, "coordinator shutting down"));
  }
  impl_->listener->close();
  if (impl_->stop_watch) impl_->stop_watch->cancel();
  impl_->io.restart();
  impl_->io.poll();
}

std::string TcpCohort::local_address() const { return impl_->listener->local_endpoint().to_string(); }

size_t TcpCohort::size() const { return impl_->ready_count(); }

std::vector<WorkerInfo> TcpCohort::workers() const {
  std::vector<WorkerInfo> out;
  for (const auto& [id, m] : impl_->members) {
    if (m->active()) out.push_back(m->info);
  }
  return out;
}

bool TcpCohort::wait_for_workers(size_t n, Deadline deadline) {
  return impl_->run_until([&] { return impl_->ready_count() >= n; }, deadline);
}

std::vector<Failure> TcpCohort::exchange(std::vector<Instruction> instructions, const Exchange& handlers) {
  FEDRA_ASSERT(handlers.on_reply && handlers.deadline, "an exchange needs on_reply and deadline");
  std::vector<Failure> failures;
  size_t outstanding = 0;
  auto fail = [&failures, &handlers](Failure f) {
    failures.push_back(f);
    if (handlers.on_failure) handlers.on_failure(failures.back());
  };
  std::vector<std::shared_ptr<Impl::Member>> asked;
  for (auto& ins : instructions) {
    auto it = impl_->members.find(ins.worker);
    if (it == impl_->members.end() || !it->second->active()) {
      fail({ins.worker, it == impl_->members.end() ? fmt::format("worker #{}", ins.worker) : it->second->info.name,
            ErrorKind::kDisconnected, "not connected (it left before this request)"});
      continue;
    }
    auto m = it->second;
    FEDRA_ASSERT(m->pending_id == 0, "worker {} already has request {} pending", m->info.name,
                 m->pending_id);
    transport::Envelope env = to_envelope(ins.message);
    env.sender = protocol::kCoordinatorName;
    env.request_id = impl_->next_request++;
    std::optional<transport::OutFrame> frame;
    try {
      frame.emplace(transport::encode(env, impl_->config.limits));
    } catch (const Error& e) {
      fail({m->info.id, m->info.name, e.kind(), e.what()});
      continue;
    }
    m->pending_id = env.request_id;
    const WorkerInfo info = m->info;
    const uint64_t request_id = env.request_id;
    Impl* impl = impl_.get();
    if (handlers.on_part) {
      m->on_part = std::make_shared<std::function<void(Message&&)>>([impl, &handlers, info, request_id](Message&& part) {
        try {
          handlers.on_part(info, std::move(part));
        } catch (const std::exception& e) {
          auto member = impl->members.find(info.id);
          impl->send_refusal(info.id, request_id, ErrorKind::kFailed, e.what());
          if (member != impl->members.end()) impl->fail_pending(*member->second, ErrorKind::kFailed, e.what());
        }
      });
    }
    // A reply the strategy refuses (throws on) is a failure here and an error envelope there.
    m->on_reply = [&fail, &outstanding, &handlers, info, impl, request_id](Message&& reply) {
      --outstanding;
      try {
        handlers.on_reply(info, std::move(reply));
      } catch (const Error& e) {
        impl->send_refusal(info.id, request_id, e.kind(), e.what());
        fail({info.id, info.name, e.kind(), e.what()});
      } catch (const std::exception& e) {
        impl->send_refusal(info.id, request_id, ErrorKind::kFailed, e.what());
        fail({info.id, info.name, ErrorKind::kFailed, e.what()});
      }
    };
    m->on_fail = [&fail, &outstanding](Failure f) {
      --outstanding;
      fail(std::move(f));
    };
    const uint64_t frame_bytes = frame->size_bytes();
    m->conn->send(std::move(*frame), [name = info.name, frame_bytes]() {
      spdlog::debug("request to {} written ({})", name, transport::format_bytes(frame_bytes));
    });
    asked.push_back(m);
    ++outstanding;
  }
  bool finished = impl_->run_until_fn([&] { return outstanding == 0; }, handlers.deadline);
  while (!finished && !impl_->stop && handlers.on_deadline && handlers.on_deadline()) {
    finished = impl_->run_until_fn([&] { return outstanding == 0; }, handlers.deadline);
  }
  if (!finished) {
    const std::string why = impl_->stop
                                ? std::string("interrupted by a signal")
                                : fmt::format("no reply before the deadline");
    for (auto& m : asked) {
      if (m->pending_id != 0) {
        // Told, so that a worker that was away (stopped, swapped out) skips the stale request
        // instead of doing its work first.
        if (!impl_->stop) {
          impl_->send_refusal(m->info.id, m->pending_id, ErrorKind::kOverloaded,
                              fmt::format("request {} expired ({}); the coordinator moved on", m->pending_id, why));
        }
        impl_->fail_pending(*m, impl_->stop ? ErrorKind::kFailed : ErrorKind::kOverloaded, why);
      }
    }
  }
  return failures;
}

bool TcpCohort::post(WorkerId worker, const Message& message) {
  auto it = impl_->members.find(worker);
  if (it == impl_->members.end()) return false;
  Impl::Member& m = *it->second;
  if (m.pending_id == 0 || !m.conn->is_open()) return false;
  transport::Envelope env = to_envelope(message);
  env.sender = protocol::kCoordinatorName;
  env.request_id = m.pending_id;
  env.partial = true;
  m.conn->send(transport::encode(env, impl_->config.limits));
  return true;
}

void TcpCohort::cancel(WorkerId worker, const std::string& reason) {
  auto it = impl_->members.find(worker);
  if (it == impl_->members.end()) return;
  Impl::Member& m = *it->second;
  if (m.pending_id == 0) return;
  if (m.conn->is_open()) {
    transport::Envelope env;
    env.kind = protocol::kError;
    env.sender = protocol::kCoordinatorName;
    env.request_id = m.pending_id;
    env.partial = true;
    env.error = transport::WireError{ErrorKind::kFailed, reason};
    m.conn->send(transport::encode(env, impl_->config.limits));
  }
  impl_->fail_pending(m, ErrorKind::kFailed, "cancelled by the coordinator: " + reason);
}

void TcpCohort::shutdown(const std::string& reason, std::chrono::milliseconds grace) {
  size_t unsent = 0;
  Message bye(protocol::kShutdown);
  bye.sender = protocol::kCoordinatorName;
  bye.options["reason"] = reason;
  const transport::Envelope env = to_envelope(bye);
  for (auto& [id, m] : impl_->members) {
    impl_->clear_pending(*m);
    if (!m->ready || !m->conn->is_open()) continue;
    ++unsent;
    m->conn->send(transport::encode(env, impl_->config.limits), [&unsent]() { --unsent; });
  }
  impl_->run_until([&] { return unsent == 0; }, Clock::now() + grace, /*even_if_stopping=*/true);
  for (auto& [id, m] : impl_->members) {
    m->conn->close(Error(ErrorKind::kDisconnected, "job finished"));
  }
  impl_->listener->close();
  impl_->io.restart();
  impl_->io.poll();
}

uint64_t TcpCohort::bytes_up() const {
  uint64_t n = impl_->closed_bytes_up;
  for (const auto& [id, m] : impl_->members) n += m->conn->bytes_received();
  return n;
}

uint64_t TcpCohort::bytes_down() const {
  uint64_t n = impl_->closed_bytes_down;
  for (const auto& [id, m] : impl_->members) n += m->conn->bytes_sent();
  return n;
}

std::vector<WorkerBytes> TcpCohort::bytes_by_worker() const {
  auto by_name = impl_->closed_by_name;
  for (const auto& [id, m] : impl_->members) {
    if (!m->ready) continue;
    auto& b = by_name[m->info.name];
    b.first += m->conn->bytes_received();
    b.second += m->conn->bytes_sent();
  }
  std::vector<WorkerBytes> out;
  for (const auto& [name, b] : by_name) out.push_back({name, b.first, b.second});
  return out;
}

uint64_t TcpCohort::peak_receive_bytes() const { return impl_->budget->peak(); }

bool TcpCohort::stop_requested() const { return impl_->stop || (impl_->config.stop && impl_->config.stop->requested()); }

}  // namespace fedra
