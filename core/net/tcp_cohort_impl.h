// TcpCohort's inside (core/net/tcp_cohort.h), shared by its two files: tcp_cohort.cc (requests,
// exchanges, the event loop) and handshake.cc (connections from accept to welcome, and their end).
// Not an interface.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include <asio.hpp>
#include <asio/posix/stream_descriptor.hpp>
#include <spdlog/spdlog.h>

#include "core/net/protocol.h"
#include "core/net/tcp_cohort.h"
#include "core/system/stop.h"
#include "transport/tcp/connection.h"

namespace fedra {

namespace tcp = transport::tcp;

// 128 random bits, hex: the job's peer key.
std::string random_key();

struct TcpCohort::Impl {
  struct Member {
    WorkerInfo info;
    std::shared_ptr<tcp::Connection> conn;
    bool ready = false;     // past the handshake
    bool rejected = false;  // refused or dropped: its connection is closing
    bool active() const { return ready && !rejected; }  // listed, sampled, asked
    std::optional<asio::steady_timer> handshake_timer;
    // At most one request is outstanding per worker.
    uint64_t pending_id = 0;
    // Shared so that a handler that ends the request (clearing it) is not destroyed mid-call.
    std::shared_ptr<std::function<void(Message&&)>> on_part;
    std::function<void(Message&&)> on_reply;
    std::function<void(Failure)> on_fail;
  };

  CohortConfig config;
  asio::io_context io;
  std::shared_ptr<tcp::ReceiveBudget> budget;
  std::shared_ptr<tcp::FrameDumper> dumper;
  std::unique_ptr<tcp::Listener> listener;
  std::optional<asio::posix::stream_descriptor> stop_watch;  // the app's StopSignal, to wake for
  std::map<WorkerId, std::shared_ptr<Member>> members;
  WorkerId next_id = 1;
  uint64_t next_request = 1;
  uint64_t closed_bytes_up = 0;
  uint64_t closed_bytes_down = 0;
  std::map<std::string, std::pair<uint64_t, uint64_t>> closed_by_name;  // ready workers' (up, down)
  bool stop = false;
  // The job's secret for worker-to-worker links: every worker gets it in its welcome and shows it
  // to the peers it connects to (core/net/peer.h).
  std::string peer_key;

  explicit Impl(CohortConfig c);

  size_t ready_count() const {
    return static_cast<size_t>(std::count_if(members.begin(), members.end(),
                                             [](const auto& m) { return m.second->active(); }));
  }

  void accept(asio::ip::tcp::socket socket);

  void reject(Member& m, const Error& why);

  void on_frame(WorkerId id, transport::InFrame frame);

  void hello(Member& m, transport::Envelope& env);

  void on_close(WorkerId id, const Error& reason);

  void clear_pending(Member& m) {
    m.pending_id = 0;
    m.on_part = nullptr;
    m.on_reply = nullptr;
    m.on_fail = nullptr;
  }

  // Tells a worker that its answer to `request_id` was refused and why (protocol: an `error`
  // envelope naming the request; the worker logs it and stays). Nothing if it is gone.
  void send_refusal(WorkerId id, uint64_t request_id, ErrorKind kind, const std::string& message) {
    auto it = members.find(id);
    if (it == members.end() || !it->second->conn->is_open()) return;
    transport::Envelope env;
    env.kind = protocol::kError;
    env.sender = protocol::kCoordinatorName;
    env.request_id = request_id;
    env.error = transport::WireError{kind, message};
    try {
      it->second->conn->send(transport::encode(env, config.limits));
    } catch (const Error& e) {
      spdlog::warn("cannot tell {} its reply was refused: {}", it->second->info.name, e.what());
    }
  }

  void fail_pending(Member& m, ErrorKind kind, const std::string& message) {
    if (m.pending_id == 0) return;
    auto on_fail = std::move(m.on_fail);
    clear_pending(m);
    on_fail(Failure{m.info.id, m.info.name, kind, message});
  }

  // Runs the io_context until `done()` or the deadline; false on deadline, or on stop unless
  // `even_if_stopping` (shutdown must still deliver its goodbyes after a signal).
  template <class Done>
  bool run_until(Done done, Deadline deadline, bool even_if_stopping = false) {
    return run_until_fn(done, [deadline] { return deadline; }, even_if_stopping);
  }

  template <class Done, class DeadlineFn>
  bool run_until_fn(Done done, DeadlineFn deadline_fn, bool even_if_stopping = false) {
    io.restart();
    while (!done()) {
      if (!stop && config.stop && config.stop->requested()) stop = true;  // requested before the watch ran
      if (stop && !even_if_stopping) return false;
      const Deadline deadline = deadline_fn();
      if (Clock::now() >= deadline) return false;
      io.run_one_until(deadline);
    }
    return true;
  }
};

}  // namespace fedra
