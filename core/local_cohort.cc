#include "core/local_cohort.h"

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include <c10/util/Exception.h>

#include "core/protocol.h"

namespace fedra {

namespace {

// What travels between the halves: a message as it comes out of a frame, and the envelope
// fields a Message does not carry.
struct Item {
  enum class What { kRequest, kPart, kReply, kCancel, kShutdown } what = What::kRequest;
  uint64_t request_id = 0;
  Message message;
  WorkerId from = 0;
};

// Encodes `m` into a frame and decodes it back: the bytes a socket would carry.
Message through_the_wire(const Message& m, const std::string& sender, uint64_t request_id, bool partial,
                         uint64_t& bytes) {
  transport::Envelope env = to_envelope(m);
  env.sender = sender;
  env.request_id = request_id;
  env.partial = partial;
  const transport::Limits limits;
  const std::vector<std::byte> frame = transport::encode(env, limits).to_bytes();
  bytes += frame.size();
  return from_envelope(transport::decode(transport::InFrame::from_bytes(frame.data(), frame.size(), limits), limits));
}

}  // namespace

struct LocalCohort::Impl {
  struct Member {
    WorkerInfo info;
    std::unique_ptr<WorkerStrategy> strategy;
    WorkerContext ctx;
    std::shared_ptr<const Dataset> data, eval_data;
    std::deque<Item> inbox;
    std::condition_variable cv;
    uint64_t pending = 0;  // the coordinator's pending request to it (0: none)
    bool gone = false;
    uint64_t up = 0, down = 0;
    std::thread thread;
  };

  // The worker's side of an exchange: parts go to the coordinator's queue, posts come from the
  // member's inbox.
  class Link : public WorkerLink {
   public:
    Link(Impl& impl, Member& member, uint64_t request_id) : impl_(impl), m_(member), id_(request_id) {}
    void send(const Message& part) override { impl_.to_coordinator(m_, part, id_, Item::What::kPart); }
    Message receive(std::chrono::milliseconds timeout) override {
      std::unique_lock<std::mutex> lock(impl_.mu);
      if (!m_.cv.wait_for(lock, timeout, [&] { return !m_.inbox.empty(); })) {
        FEDRA_THROW(ErrorKind::kOverloaded, "no message from the coordinator within {} ms", timeout.count());
      }
      Item it = std::move(m_.inbox.front());
      if (it.what == Item::What::kPart && it.request_id == id_) {
        m_.inbox.pop_front();
        return std::move(it.message);
      }
      if (it.what == Item::What::kCancel && it.request_id == id_) {
        m_.inbox.pop_front();
        FEDRA_FAIL("the coordinator cancelled this exchange: {}", it.message.error ? it.message.error->message : "");
      }
      // A new request or the end of the job: left for the worker's loop.
      FEDRA_FAIL("the coordinator moved on from request {}", id_);
    }

   private:
    Impl& impl_;
    Member& m_;
    uint64_t id_;
  };

  std::function<std::unique_ptr<WorkerStrategy>()> make_worker;
  WorkerId next_id = 1;
  std::mutex mu;
  std::condition_variable coordinator_cv;
  std::deque<Item> to_coord;
  std::map<WorkerId, std::unique_ptr<Member>> members;
  uint64_t next_request = 1;
  // The running exchange's failure recorder, for cancel() from inside its handlers.
  const std::function<void(Failure)>* current_fail = nullptr;

  // Ends the worker's pending request, telling the worker (its strategy sees the exchange
  // cancelled). False if it had none.
  bool end_request(WorkerId worker, const std::string& reason) {
    std::lock_guard<std::mutex> lock(mu);
    auto it = members.find(worker);
    if (it == members.end() || it->second->pending == 0) return false;
    Member& m = *it->second;
    Item item;
    item.what = Item::What::kCancel;
    item.request_id = m.pending;
    item.message.error = transport::WireError{ErrorKind::kFailed, reason};
    m.pending = 0;
    to_worker(m, std::move(item));
    return true;
  }

  void to_coordinator(Member& m, const Message& msg, uint64_t request_id, Item::What what) {
    uint64_t bytes = 0;
    Item it;
    it.what = what;
    it.request_id = request_id;
    it.from = m.info.id;
    it.message = through_the_wire(msg, m.info.name, request_id, what == Item::What::kPart, bytes);
    std::lock_guard<std::mutex> lock(mu);
    m.up += bytes;
    to_coord.push_back(std::move(it));
    coordinator_cv.notify_all();
  }

  // REQUIRES: mu held.
  void to_worker(Member& m, Item it) {
    m.inbox.push_back(std::move(it));
    m.cv.notify_all();
  }

  // REQUIRES: mu held. The message as the worker will read it, counted.
  Message encode_down(Member& m, const Message& msg, uint64_t request_id, bool partial) {
    return through_the_wire(msg, protocol::kCoordinatorName, request_id, partial, m.down);
  }

  void serve(Member& m) {
    while (true) {
      Item it;
      {
        std::unique_lock<std::mutex> lock(mu);
        m.cv.wait(lock, [&] { return !m.inbox.empty(); });
        it = std::move(m.inbox.front());
        m.inbox.pop_front();
      }
      if (it.what == Item::What::kShutdown) return;
      if (it.what != Item::What::kRequest) continue;  // a part or cancel of a request already over
      Link link(*this, m, it.request_id);
      Message reply;
      try {
        reply = m.strategy->handle(it.message, m.ctx, link);
      } catch (const Error& e) {
        reply = Message(protocol::kError, it.message.round);
        reply.error = transport::WireError{e.kind(), e.what()};
      } catch (const std::exception& e) {
        reply = Message(protocol::kError, it.message.round);
        reply.error = transport::WireError{ErrorKind::kFailed, e.what()};
      }
      to_coordinator(m, reply, it.request_id, Item::What::kReply);
    }
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
  for (auto& [wid, m] : impl_->members) {
    Impl::Member* member = m.get();
    m->thread = std::thread([this, member] { impl_->serve(*member); });
  }
}

LocalCohort::~LocalCohort() {
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    for (auto& [id, m] : impl_->members) {
      Item it;
      it.what = Item::What::kShutdown;
      impl_->to_worker(*m, std::move(it));
    }
  }
  for (auto& [id, m] : impl_->members) {
    if (m->thread.joinable()) m->thread.join();
  }
}

void LocalCohort::disconnect(const std::string& name) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  for (auto& [id, m] : impl_->members) {
    if (m->info.name != name || m->gone) continue;
    m->gone = true;
    Item it;  // the coordinator's loop turns a pending request into a failure
    it.what = Item::What::kReply;
    it.from = id;
    it.request_id = m->pending;
    it.message = Message(protocol::kError);
    it.message.error = transport::WireError{ErrorKind::kDisconnected, "closed the connection"};
    impl_->to_coord.push_front(std::move(it));
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
  member->thread = std::thread([this, member] { impl_->serve(*member); });
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

bool LocalCohort::wait_for_workers(size_t n, Deadline) { return size() >= n; }

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
  std::map<WorkerId, WorkerInfo> asked;
  {
    std::unique_lock<std::mutex> lock(impl_->mu);
    for (auto& ins : instructions) {
      auto it = impl_->members.find(ins.worker);
      if (it == impl_->members.end() || it->second->gone) {
        lock.unlock();
        fail({ins.worker, it == impl_->members.end() ? fmt::format("worker #{}", ins.worker) : it->second->info.name,
              ErrorKind::kDisconnected, "not connected (it left before this request)"});
        lock.lock();
        continue;
      }
      Impl::Member& m = *it->second;
      FEDRA_ASSERT(m.pending == 0, "worker {} already has request {} pending", m.info.name, m.pending);
      Item item;
      item.what = Item::What::kRequest;
      item.request_id = impl_->next_request++;
      item.message = impl_->encode_down(m, ins.message, item.request_id, false);
      m.pending = item.request_id;
      asked.emplace(m.info.id, m.info);
      impl_->to_worker(m, std::move(item));
    }
  }
  auto pending_of = [&](WorkerId id) -> uint64_t& { return impl_->members.at(id)->pending; };
  auto outstanding = [&] {
    std::lock_guard<std::mutex> lock(impl_->mu);
    size_t n = 0;
    for (const auto& [id, info] : asked) n += pending_of(id) != 0 ? 1 : 0;
    return n;
  };
  while (outstanding() > 0) {
    Item it;
    {
      std::unique_lock<std::mutex> lock(impl_->mu);
      const bool got = impl_->coordinator_cv.wait_until(lock, handlers.deadline(), [&] { return !impl_->to_coord.empty(); });
      if (!got && handlers.on_deadline) {
        lock.unlock();
        const bool go_on = handlers.on_deadline();
        lock.lock();
        if (go_on) continue;
      }
      if (!got) {
        std::vector<WorkerId> late;
        for (const auto& [id, info] : asked) {
          if (pending_of(id) != 0) late.push_back(id);
        }
        lock.unlock();
        for (WorkerId id : late) {
          if (impl_->end_request(id, "no reply before the deadline")) {
            fail({id, asked.at(id).name, ErrorKind::kOverloaded, "no reply before the deadline"});
          }
        }
        break;
      }
      it = std::move(impl_->to_coord.front());
      impl_->to_coord.pop_front();
      const auto m = asked.find(it.from);
      if (m == asked.end() || it.request_id == 0 || pending_of(it.from) != it.request_id) continue;  // stale
      if (it.what == Item::What::kReply || it.message.error) pending_of(it.from) = 0;
    }
    const WorkerInfo& info = asked.at(it.from);
    if (it.message.error) {
      fail({info.id, info.name, it.message.error->kind, it.message.error->message});
      continue;
    }
    try {
      if (it.what == Item::What::kPart) {
        if (handlers.on_part) handlers.on_part(info, std::move(it.message));
      } else {
        handlers.on_reply(info, std::move(it.message));
      }
    } catch (const std::exception& e) {
      const ErrorKind kind = dynamic_cast<const Error*>(&e) ? static_cast<const Error&>(e).kind() : ErrorKind::kFailed;
      // A rejected part fails the request; the worker is told, so it does not wait for answers.
      if (it.what == Item::What::kPart && !impl_->end_request(info.id, e.what())) continue;
      fail({info.id, info.name, kind, e.what()});
    }
  }
  return failures;
}

bool LocalCohort::post(WorkerId worker, const Message& message) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  auto it = impl_->members.find(worker);
  if (it == impl_->members.end() || it->second->gone || it->second->pending == 0) return false;
  Impl::Member& m = *it->second;
  Item item;
  item.what = Item::What::kPart;
  item.request_id = m.pending;
  item.message = impl_->encode_down(m, message, m.pending, true);
  impl_->to_worker(m, std::move(item));
  return true;
}

void LocalCohort::cancel(WorkerId worker, const std::string& reason) {
  if (impl_->end_request(worker, reason) && impl_->current_fail) {
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
