#include "tests/support/local_cohort.h"

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <thread>

#include "core/data/dataset.h"
#include "core/net/protocol.h"
#include "core/runtime/serve.h"

namespace fedra {

namespace {

// Encodes `env` into a frame and decodes it back: the bytes a socket would carry, counted.
transport::Envelope through_the_wire(const transport::Envelope& env, uint64_t& bytes) {
  const transport::Limits limits;
  const std::vector<std::byte> frame = transport::encode(env, limits).to_bytes();
  bytes += frame.size();
  return transport::decode(transport::InFrame::from_bytes(frame.data(), frame.size(), limits), limits);
}

transport::Envelope from_coordinator(const Message& m, uint64_t request_id, bool partial) {
  transport::Envelope env = to_envelope(m);
  env.sender = protocol::kCoordinatorName;
  env.request_id = request_id;
  env.partial = partial;
  return env;
}

transport::Envelope error_envelope(uint64_t request_id, bool partial, ErrorKind kind, const std::string& why) {
  transport::Envelope env;
  env.kind = protocol::kError;
  env.sender = protocol::kCoordinatorName;
  env.request_id = request_id;
  env.partial = partial;
  env.error = transport::WireError{kind, why};
  return env;
}

}  // namespace

struct LocalCohort::Impl {
  struct Member;

  // A frame from a worker, as the coordinator's loop takes it.
  struct Arrival {
    WorkerId from = 0;
    transport::Envelope env;
    bool left = false;  // not a frame: the worker is gone (disconnect())
  };

  // The worker's end of its link: what the worker's loop (serve(), the one every worker runs)
  // reads and writes. Frames go to the coordinator's queue; the coordinator's come from the
  // member's inbox.
  class WorkerEnd : public transport::Channel {
   public:
    WorkerEnd(Impl& impl, Member& member) : impl_(impl), m_(member) {}
    void send(const transport::Envelope& envelope) override { impl_.from_worker(m_, envelope); }
    transport::Envelope receive(std::optional<std::chrono::milliseconds> timeout) override {
      std::unique_lock<std::mutex> lock(impl_.mu);
      const auto ready = [&] { return !m_.inbox.empty(); };
      if (!timeout) {
        m_.cv.wait(lock, ready);
      } else if (!m_.cv.wait_for(lock, *timeout, ready)) {
        FEDRA_THROW(ErrorKind::kOverloaded, "no message from the coordinator within {} ms", timeout->count());
      }
      transport::Envelope env = std::move(m_.inbox.front());
      m_.inbox.pop_front();
      return env;
    }
    std::optional<transport::Envelope> poll_receive() override {
      std::lock_guard<std::mutex> lock(impl_.mu);
      if (m_.inbox.empty()) return std::nullopt;
      transport::Envelope env = std::move(m_.inbox.front());
      m_.inbox.pop_front();
      return env;
    }
    void close() override {}
    const std::string& peer() const override { return peer_; }
    std::string local_host() const override { return ""; }

   private:
    Impl& impl_;
    Member& m_;
    const std::string peer_ = "in-process";
  };

  struct Member {
    WorkerInfo info;
    std::unique_ptr<WorkerStrategy> strategy;
    WorkerContext ctx;
    std::shared_ptr<const Dataset> data, eval_data;
    std::deque<transport::Envelope> inbox;  // to the worker
    std::condition_variable cv;
    uint64_t pending = 0;  // the coordinator's pending request to it (0: none)
    bool gone = false;
    uint64_t up = 0, down = 0;
    std::thread thread;
  };

  std::function<std::unique_ptr<WorkerStrategy>()> make_worker;
  WorkerId next_id = 1;
  std::mutex mu;
  std::condition_variable coordinator_cv;
  std::deque<Arrival> to_coord;
  std::map<WorkerId, std::unique_ptr<Member>> members;
  uint64_t next_request = 1;
  // The running exchange's failure recorder, for cancel() from inside its handlers.
  const std::function<void(Failure)>* current_fail = nullptr;

  void from_worker(Member& m, const transport::Envelope& env) {
    uint64_t bytes = 0;
    Arrival a{m.info.id, through_the_wire(env, bytes)};
    std::lock_guard<std::mutex> lock(mu);
    m.up += bytes;
    to_coord.push_back(std::move(a));
    coordinator_cv.notify_all();
  }

  // REQUIRES: mu held.
  void to_worker(Member& m, const transport::Envelope& env) {
    m.inbox.push_back(through_the_wire(env, m.down));
    m.cv.notify_all();
  }

  // Ends the worker's pending request, telling the worker with `notice` (a cancelled exchange, or
  // an expired request). False if it had none.
  bool end_request(WorkerId worker, bool partial, ErrorKind kind, const std::string& reason) {
    std::lock_guard<std::mutex> lock(mu);
    auto it = members.find(worker);
    if (it == members.end() || it->second->pending == 0) return false;
    Member& m = *it->second;
    to_worker(m, error_envelope(m.pending, partial, kind, reason));
    m.pending = 0;
    return true;
  }

  std::map<WorkerId, WorkerInfo> send_requests(std::vector<Instruction> instructions,
                                               const std::function<void(Failure)>& fail) {
    std::map<WorkerId, WorkerInfo> asked;
    std::unique_lock<std::mutex> lock(mu);
    for (auto& ins : instructions) {
      auto it = members.find(ins.worker);
      if (it == members.end() || it->second->gone) {
        lock.unlock();
        fail({ins.worker, it == members.end() ? fmt::format("worker #{}", ins.worker) : it->second->info.name,
              ErrorKind::kDisconnected, "not connected (it left before this request)"});
        lock.lock();
        continue;
      }
      Member& m = *it->second;
      FEDRA_ASSERT(m.pending == 0, "worker {} already has request {} pending", m.info.name, m.pending);
      m.pending = next_request++;
      asked.emplace(m.info.id, m.info);
      to_worker(m, from_coordinator(ins.message, m.pending, false));
    }
    return asked;
  }

  void expire(const std::map<WorkerId, WorkerInfo>& asked, const std::function<void(Failure)>& fail) {
    for (const auto& [id, info] : asked) {
      uint64_t request = 0;
      {
        std::lock_guard<std::mutex> lock(mu);
        request = members.at(id)->pending;
      }
      // Told, as TcpCohort tells it, so that a worker that was away skips the stale request.
      if (request != 0 && end_request(id, false, ErrorKind::kOverloaded,
                                      fmt::format("request {} expired (no reply before the deadline); the "
                                                  "coordinator moved on", request))) {
        fail({id, info.name, ErrorKind::kOverloaded, "no reply before the deadline"});
      }
    }
  }

  void deliver(const WorkerInfo& info, Arrival a, const Exchange& handlers,
               const std::function<void(Failure)>& fail) {
    if (a.left) {
      fail({info.id, info.name, ErrorKind::kDisconnected, "closed the connection"});
      return;
    }
    if (a.env.error) {
      fail({info.id, info.name, a.env.error->kind, a.env.error->message});
      return;
    }
    const bool part = a.env.partial;
    const uint64_t request = a.env.request_id;
    try {
      Message m = from_envelope(std::move(a.env));
      if (part) {
        if (handlers.on_part) handlers.on_part(info, std::move(m));
      } else {
        handlers.on_reply(info, std::move(m));
      }
    } catch (const std::exception& e) {
      const ErrorKind kind = dynamic_cast<const Error*>(&e) ? static_cast<const Error&>(e).kind() : ErrorKind::kFailed;
      if (part) {
        // A rejected part fails the request; the worker is told, so it does not wait for answers.
        if (!end_request(info.id, true, kind, e.what())) return;
      } else {
        std::lock_guard<std::mutex> lock(mu);  // a refused reply: told, as TcpCohort tells it
        to_worker(*members.at(info.id), error_envelope(request, false, kind, e.what()));
      }
      fail({info.id, info.name, kind, e.what()});
    }
  }

  void start(Member& m) {
    m.thread = std::thread([this, &m] {
      WorkerEnd end(*this, m);
      serve(end, *m.strategy, m.ctx);
    });
  }
};

LocalCohort::LocalCohort(const Job& job, const StrategyRegistry& registry, std::vector<LocalWorker> workers)
    : impl_(std::make_unique<Impl>()) {
  const StrategyInfo& info = registry.get(job.strategy);
  impl_->make_worker = [make = info.make_worker, job] { return make(job); };
  WorkerId id = 1;
  for (auto& w : workers) {
    auto m = std::make_unique<Impl::Member>();
    m->info.id = id;
    m->info.name = w.name;
    m->info.address = "in-process";
    m->data = std::move(w.data);
    if (m->data) {
      m->info.num_examples = m->data->size();
      m->info.label_histogram = label_histogram(*m->data);
    }
    m->ctx.job = job;
    m->ctx.name = w.name;
    m->ctx.worker_id = id;
    m->ctx.data = m->data.get();
    m->eval_data = std::move(w.eval_data);
    m->ctx.eval_data = m->eval_data.get();
    m->strategy = info.make_worker(job);
    impl_->members.emplace(id++, std::move(m));
  }
  impl_->next_id = id;
  for (auto& [wid, m] : impl_->members) impl_->start(*m);
}

LocalCohort::~LocalCohort() {
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    Message bye(protocol::kShutdown);
    bye.options["reason"] = "the test's cohort is gone";
    for (auto& [id, m] : impl_->members) impl_->to_worker(*m, from_coordinator(bye, 0, false));
  }
  for (auto& [id, m] : impl_->members) {
    if (m->thread.joinable()) m->thread.join();
  }
}

void LocalCohort::disconnect(const std::string& name) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  for (auto& [id, m] : impl_->members) {
    if (m->info.name != name || m->gone) continue;
    m->gone = true;  // the coordinator's loop turns a pending request into a failure
    impl_->to_coord.push_front(Impl::Arrival{id, {}, true});
    impl_->coordinator_cv.notify_all();
  }
}

void LocalCohort::rejoin(const std::string& name) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  const Impl::Member* old = nullptr;
  for (const auto& [id, m] : impl_->members) {
    FEDRA_REQUIRE(m->info.name != name || m->gone, "worker {} is still connected", name);
    if (m->info.name == name) old = m.get();
  }
  FEDRA_REQUIRE(old != nullptr, "no worker {} was ever here", name);
  auto m = std::make_unique<Impl::Member>();
  const WorkerId id = impl_->next_id++;
  m->info = old->info;
  m->info.id = id;
  m->data = old->data;
  m->eval_data = old->eval_data;
  m->ctx = old->ctx;
  m->ctx.worker_id = id;
  m->ctx.data = m->data.get();
  m->ctx.eval_data = m->eval_data.get();
  m->strategy = impl_->make_worker();
  Impl::Member* member = m.get();
  impl_->members.emplace(id, std::move(m));
  impl_->start(*member);
  impl_->coordinator_cv.notify_all();  // wait_for_workers
}

size_t LocalCohort::size() const { return workers().size(); }

std::vector<WorkerInfo> LocalCohort::workers() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  std::vector<WorkerInfo> out;
  for (const auto& [id, m] : impl_->members) {
    if (!m->gone) out.push_back(m->info);
  }
  return out;
}

bool LocalCohort::wait_for_workers(size_t n, Deadline deadline) {
  std::unique_lock<std::mutex> lock(impl_->mu);
  return impl_->coordinator_cv.wait_until(lock, deadline, [&] {
    size_t here = 0;
    for (const auto& [id, m] : impl_->members) here += m->gone ? 0 : 1;
    return here >= n;
  });
}

std::vector<Failure> LocalCohort::exchange(std::vector<Instruction> instructions, const Exchange& handlers) {
  FEDRA_ASSERT(handlers.on_reply && handlers.deadline, "an exchange needs on_reply and deadline");
  std::vector<Failure> failures;
  const std::function<void(Failure)> fail = [&](Failure f) {
    failures.push_back(std::move(f));
    if (handlers.on_failure) handlers.on_failure(failures.back());
  };
  impl_->current_fail = &fail;
  struct Done {
    Impl* impl;
    ~Done() { impl->current_fail = nullptr; }
  } done{impl_.get()};
  const std::map<WorkerId, WorkerInfo> asked = impl_->send_requests(std::move(instructions), fail);
  auto pending_of = [&](WorkerId id) -> uint64_t& { return impl_->members.at(id)->pending; };
  auto outstanding = [&] {
    size_t n = 0;
    for (const auto& [id, info] : asked) n += pending_of(id) != 0 ? 1 : 0;
    return n;
  };
  for (;;) {
    Impl::Arrival a;
    {
      std::unique_lock<std::mutex> lock(impl_->mu);
      if (outstanding() == 0) break;
      const bool got = impl_->coordinator_cv.wait_until(lock, handlers.deadline(), [&] { return !impl_->to_coord.empty(); });
      if (!got) {
        lock.unlock();
        if (handlers.on_deadline && handlers.on_deadline()) continue;
        impl_->expire(asked, fail);
        break;
      }
      a = std::move(impl_->to_coord.front());
      impl_->to_coord.pop_front();
      const auto m = asked.find(a.from);
      if (m == asked.end() || (!a.left && (a.env.request_id == 0 || pending_of(a.from) != a.env.request_id))) continue;
      if (a.left && pending_of(a.from) == 0) continue;
      if (a.left || !a.env.partial || a.env.error) pending_of(a.from) = 0;
    }
    impl_->deliver(asked.at(a.from), std::move(a), handlers, fail);
  }
  return failures;
}

bool LocalCohort::post(WorkerId worker, const Message& message) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  auto it = impl_->members.find(worker);
  if (it == impl_->members.end() || it->second->gone || it->second->pending == 0) return false;
  Impl::Member& m = *it->second;
  impl_->to_worker(m, from_coordinator(message, m.pending, true));
  return true;
}

void LocalCohort::cancel(WorkerId worker, const std::string& reason) {
  if (impl_->end_request(worker, true, ErrorKind::kFailed, reason) && impl_->current_fail) {
    (*impl_->current_fail)({worker, impl_->members.at(worker)->info.name, ErrorKind::kFailed,
                            "cancelled by the coordinator: " + reason});
  }
}

std::vector<WorkerBytes> LocalCohort::bytes_by_worker() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  std::vector<WorkerBytes> out;
  for (const auto& [id, m] : impl_->members) out.push_back({m->info.name, m->up, m->down});
  std::sort(out.begin(), out.end(), [](const WorkerBytes& a, const WorkerBytes& b) { return a.name < b.name; });
  return out;
}

}  // namespace fedra
