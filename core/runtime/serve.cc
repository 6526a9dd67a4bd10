#include "core/runtime/serve.h"

#include <algorithm>
#include <deque>
#include <optional>

#include <spdlog/spdlog.h>

#include "core/net/protocol.h"

namespace fedra {

void tell_coordinator(transport::Channel& channel, const std::string& name, const Error& e) {
  if (e.kind() != ErrorKind::kFailed) return;  // gone or timed out: nobody to tell, or nothing wrong with it
  transport::Envelope env;
  env.kind = protocol::kError;
  env.sender = name;
  env.error = transport::WireError{ErrorKind::kFailed, fmt::format("worker {} hangs up: {}", name, e.what())};
  try {
    channel.send(env);
  } catch (const Error&) {
  }
}

namespace {

Message error_reply(const Message& request, ErrorKind kind, const std::string& what) {
  Message reply(protocol::kError, request.round);
  reply.step = request.step;
  reply.error = transport::WireError{kind, what};
  return reply;
}

// The worker's side of an exchange, over the channel. Frames the loop already read ahead
// (`ahead`) come first.
class ChannelLink : public WorkerLink {
 public:
  ChannelLink(transport::Channel& channel, std::string name, std::deque<transport::Envelope>& ahead)
      : channel_(channel), name_(std::move(name)), ahead_(ahead) {}

  void begin(uint64_t request_id) { request_id_ = request_id; }

  void send(const Message& part) override {
    transport::Envelope env = to_envelope(part);
    env.sender = name_;
    env.request_id = request_id_;
    env.partial = true;
    channel_.send(env);
  }

  Message receive(std::chrono::milliseconds timeout) override {
    transport::Envelope env;
    if (!ahead_.empty()) {
      env = std::move(ahead_.front());
      ahead_.pop_front();
    } else {
      env = channel_.receive(timeout);
    }
    if (env.request_id == request_id_ && env.partial) {
      if (env.error) {
        FEDRA_FAIL("the coordinator cancelled the exchange: {}", env.error->message);
      }
      return from_envelope(std::move(env));
    }
    // Anything else (a shutdown, a new request) ends this exchange; the loop handles it next.
    const std::string kind = env.kind;
    stash_ = std::move(env);
    FEDRA_FAIL("the coordinator moved on ('{}') while request {} was in progress", kind, request_id_);
  }

  // A message that arrived during an exchange but belongs to the loop.
  bool has_stash() const { return stash_.has_value(); }
  std::optional<transport::Envelope> take_stash() {
    auto out = std::move(stash_);
    stash_.reset();
    return out;
  }

 private:
  transport::Channel& channel_;
  std::string name_;
  std::deque<transport::Envelope>& ahead_;
  uint64_t request_id_ = 0;
  std::optional<transport::Envelope> stash_;
};

// What the loop does with one frame: go on to the next, or end with an exit code.
struct Next {
  bool done = false;
  int code = 0;
};
constexpr Next kGoOn{};

class Server {
 public:
  Server(transport::Channel& channel, WorkerStrategy& strategy, WorkerContext& ctx)
      : channel_(channel), strategy_(strategy), ctx_(ctx), link_(channel, ctx.name, ahead_) {}

  int run() {
    for (;;) {
      std::optional<transport::Envelope> env = next_frame();
      if (!env) return 1;
      const Next next = handle_frame(std::move(*env));
      if (next.done) return next.code;
    }
  }

 private:
  // The next frame: one an exchange stashed, one read ahead, or a fresh one. nullopt: the link broke.
  std::optional<transport::Envelope> next_frame() {
    if (auto stashed = link_.take_stash()) return stashed;
    if (!ahead_.empty()) {
      transport::Envelope env = std::move(ahead_.front());
      ahead_.pop_front();
      return env;
    }
    try {
      return channel_.receive();
    } catch (const Error& e) {
      tell_coordinator(channel_, ctx_.name, e);
      spdlog::error("{}: {}", e.kind() == ErrorKind::kFailed ? "cannot read the coordinator's message"
                                                             : "connection to the coordinator lost",
                    e.what());
      return std::nullopt;
    }
  }

  Next handle_frame(transport::Envelope env) {
    const uint64_t request_id = env.request_id;
    if (env.partial) {  // a part of an exchange that already ended here (e.g. after an error)
      spdlog::debug("discarding a late part '{}' of request {}", env.kind, request_id);
      return kGoOn;
    }
    link_.begin(request_id);
    Message request = from_envelope(std::move(env));
    if (request.kind == protocol::kShutdown) {
      spdlog::info("coordinator ended the job: {}", request.option_or("reason", "no reason given"));
      return {true, 0};
    }
    if (request.kind == protocol::kError) {
      const std::string what = request.error ? request.error->message : std::string("(none given)");
      if (request_id != 0) {  // about this worker's answer to that request: refused, or too late
        spdlog::warn("the coordinator about request {} ({}): {}", request_id,
                     request.error ? error_kind_name(request.error->kind) : "failed", what);
        return kGoOn;
      }
      spdlog::error("coordinator reported an error: {}", what);
      return {true, 1};
    }
    spdlog::debug("request {}: '{}', round {}", request_id, request.kind, request.round);
    bool link_broke = false;
    if (expired(request_id, request, link_broke)) return link_broke ? Next{true, 1} : kGoOn;
    Message reply = answer(request);
    if (link_.has_stash()) return kGoOn;  // the coordinator moved on: no one waits for this reply
    return send_reply(std::move(reply), request, request_id);
  }

  // Has the coordinator already given up on this request (its deadline passed while this worker
  // was stopped or busy)? Then its work would be thrown away: skip it.
  bool expired(uint64_t request_id, const Message& request, bool& link_broke) {
    try {
      while (auto more = channel_.poll_receive()) ahead_.push_back(std::move(*more));
    } catch (const Error& e) {
      spdlog::error("connection to the coordinator lost: {}", e.what());
      link_broke = true;
      return true;
    }
    const auto notice = std::find_if(ahead_.begin(), ahead_.end(), [&](const transport::Envelope& e) {
      return e.kind == protocol::kError && e.request_id == request_id && !e.partial;
    });
    if (notice == ahead_.end()) return false;
    spdlog::warn("skipping request {} ('{}', round {}): the coordinator gave up on it before this worker "
                 "got to it ({})",
                 request_id, request.kind, request.round, notice->error ? notice->error->message : "");
    ahead_.erase(notice);
    return true;
  }

  Message answer(const Message& request) {
    try {
      return strategy_.handle(request, ctx_, link_);
    } catch (const Error& e) {
      spdlog::warn("request '{}' (round {}) failed: {}", request.kind, request.round, e.what());
      return error_reply(request, e.kind(), e.what());
    } catch (const std::exception& e) {  // LibTorch reports shape errors as c10::Error
      spdlog::warn("request '{}' (round {}) failed: {}", request.kind, request.round, e.what());
      return error_reply(request, ErrorKind::kFailed, e.what());
    }
  }

  Next send_reply(Message reply, const Message& request, uint64_t request_id) {
    reply.sender = ctx_.name;
    if (reply.round == 0) reply.round = request.round;
    transport::Envelope out = to_envelope(reply);
    out.request_id = request_id;
    try {
      channel_.send(out);
      return kGoOn;
    } catch (const Error& e) {
      if (shutdown_waiting()) return {true, 0};
      spdlog::error("cannot reply to the coordinator: {}", e.what());
      return {true, 1};
    }
  }

  // After a failed send: the coordinator may have ended the job while this worker worked. Its
  // shutdown is then waiting, maybe behind other messages (a notice that the request expired).
  bool shutdown_waiting() {
    try {
      for (;;) {
        Message next;
        if (!ahead_.empty()) {
          next = from_envelope(std::move(ahead_.front()));
          ahead_.pop_front();
        } else {
          next = from_envelope(channel_.receive(std::chrono::milliseconds(0)));
        }
        if (next.kind == protocol::kShutdown) {
          spdlog::info("coordinator ended the job while this worker was busy: {}",
                       next.option_or("reason", "no reason given"));
          return true;
        }
      }
    } catch (const Error&) {
    }
    return false;
  }

  transport::Channel& channel_;
  WorkerStrategy& strategy_;
  WorkerContext& ctx_;
  std::deque<transport::Envelope> ahead_;  // frames read ahead of the one being handled
  ChannelLink link_;
};

}  // namespace

int serve(transport::Channel& channel, WorkerStrategy& strategy, WorkerContext& ctx) {
  return Server(channel, strategy, ctx).run();
}

}  // namespace fedra
