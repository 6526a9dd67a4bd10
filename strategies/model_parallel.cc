#include "strategies/model_parallel.h"

#include <algorithm>
#include <map>
#include <optional>
#include <set>

#include <fmt/ranges.h>

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "core/data/batching.h"
#include "core/model/model.h"
#include "core/model/script_model.h"
#include "core/net/peer.h"
#include "core/training/training.h"
#include "strategies/losses.h"
#include "strategies/run_message.h"

namespace fedra {

ModelParallelCoordinator::ModelParallelCoordinator(Job job, RoundPlan plan, EvalOptions eval)
    : SteppedStrategy(std::move(job), plan.strategy, eval), plan_(std::move(plan)) {
  if (!plan_.script_children) {
    refuse_torchscript(this->job().model, plan_.strategy, "it shards the network's layers by their own kinds, "
                       "which a script hides");
  }
}

std::vector<WorkerInfo> ModelParallelCoordinator::pick(const Cohort& cohort) const {
  auto workers = cohort.workers_by_name();
  workers.resize(std::min(plan_.parts, workers.size()));
  return workers;
}

void ModelParallelCoordinator::start(Cohort&, const std::vector<WorkerInfo>&) { opt_state_.assign(plan_.parts, {}); }

NamedTensors ModelParallelCoordinator::state() const {
  NamedTensors s;
  for (const auto& [name, t] : model_state(*model_)) s.emplace_back("model/" + name, t.clone());
  for (size_t i = 0; i < opt_state_.size(); ++i) {
    NamedTensors opt;
    for (const auto& [name, t] : opt_state_[i]) opt.emplace_back(name, t.clone());
    append_prefixed(s, fmt::format("opt/{}/", i), opt);
  }
  return s;
}

void ModelParallelCoordinator::restore(const NamedTensors& state) {
  NamedTensors all = state;
  load_model_state(*model_, take_prefixed(all, "model/"));
  opt_state_.assign(plan_.parts, {});
  for (size_t i = 0; i < plan_.parts; ++i) opt_state_[i] = take_prefixed(all, fmt::format("opt/{}/", i));
  FEDRA_REQUIRE(all.empty(), "the checkpoint holds '{}', which {} does not keep", all.front().first, plan_.strategy);
}

StepPlan ModelParallelCoordinator::plan_steps(const std::vector<WorkerInfo>& workers) const {
  return StepPlan::from(plan_.schedule, workers.front().num_examples);
}

Metrics ModelParallelCoordinator::run_round(Cohort& cohort, const RunContext& ctx, const RoundSteps& steps) {
  return run_parts(cohort, ctx, steps, pick(cohort));
}

bool ModelParallelCoordinator::direct(const std::vector<WorkerInfo>& workers) const {
  return workers.size() > 1 && plan_.direct.value_or(can_link(workers));
}

std::vector<Message> ModelParallelCoordinator::exchange(Cohort& cohort, uint32_t round,
                                                        const std::vector<WorkerInfo>& workers,
                                                        std::vector<Instruction> instructions, const char* done_kind,
                                                        const PartHandler& on_part, const std::string& why_fatal,
                                                        bool direct) {
  std::map<WorkerId, size_t> part_of;
  for (size_t i = 0; i < workers.size(); ++i) part_of[workers[i].id] = i;
  std::vector<std::optional<Message>> done(workers.size());
  std::string abort_reason;
  std::vector<Failure> failed;  // direct links: every part's failure
  const auto step_timeout = plan_.schedule.step_timeout_ms();
  auto last_progress = Clock::now();
  const std::string progress_kind = plan_.strategy + ".progress";
  if (direct) {
    ask_to_link(instructions, workers, ++session_, fmt::format("{} topology={}", plan_.strategy, plan_.links));
  }

  Exchange ex;
  // With direct links the parts enforce step_timeout on every wait among themselves; this is the
  // backstop for a part that stops talking to everyone (a heartbeat comes at least every second).
  ex.deadline = [&] { return last_progress + step_timeout; };
  ex.on_part = [&](const WorkerInfo& w, Message&& m) {
    last_progress = Clock::now();
    if (direct) {
      FEDRA_REQUIRE(m.kind == progress_kind, "unexpected '{}' from {} during a {} round over direct links",
                    m.kind, w.name, plan_.strategy);
      return;
    }
    on_part(part_of.at(w.id), w, std::move(m));
  };
  ex.on_reply = [&](const WorkerInfo& w, Message&& m) {
    m.expect_kind(done_kind, w.name);
    last_progress = Clock::now();
    done[part_of.at(w.id)] = std::move(m);
  };
  ex.on_failure = [&](const Failure& f) {
    if (direct) {  // no cancel: a failed part closes its links, and the others fail at once
      failed.push_back(f);
      return;
    }
    if (!abort_reason.empty()) return;
    const auto it = part_of.find(f.worker);
    abort_reason = fmt::format("{} ({} {}) failed: {}", f.name, plan_.part, it == part_of.end() ? 0 : it->second,
                               f.message);
    for (const auto& w : workers) {
      if (w.id != f.worker) cohort.cancel(w.id, fmt::format("{} round failed: {}", plan_.strategy, abort_reason));
    }
  };
  // The coordinator only relays and adds: one thread, leaving the cores to the workers.
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  const auto failures = cohort.exchange(std::move(instructions), ex);
  at::set_num_threads(threads);
  if (direct && !failed.empty()) {
    // The cause first: a worker that is gone, then one that refused what it was sent or could not
    // compute, then those whose links broke because of it.
    std::set<WorkerId> connected;
    for (const auto& w : cohort.workers_by_name()) connected.insert(w.id);
    const auto rank = [&](const Failure& f) {
      if (connected.count(f.worker) == 0) return 0;
      return f.kind == ErrorKind::kFailed ? 1 : 2;
    };
    std::stable_sort(failed.begin(), failed.end(),
                     [&](const Failure& a, const Failure& b) { return rank(a) < rank(b); });
    std::vector<std::string> parts;
    for (const auto& f : failed) {
      const auto it = part_of.find(f.worker);
      parts.push_back(fmt::format("{} ({} {}) failed: {}", f.name, plan_.part, it == part_of.end() ? 0 : it->second,
                                  f.message));
    }
    FEDRA_FAIL("{} round {} failed: {}; {}", plan_.strategy, round, fmt::join(parts, "; "), why_fatal);
  }
  if (!abort_reason.empty() || !failures.empty()) {
    FEDRA_FAIL("{} round {} failed: {}; {}", plan_.strategy, round,
               abort_reason.empty() ? describe_failures(failures) : abort_reason, why_fatal);
  }
  std::vector<Message> replies;
  for (size_t i = 0; i < done.size(); ++i) {
    FEDRA_ASSERT(done[i].has_value(), "{} {} finished without a reply", plan_.part, i);
    replies.push_back(std::move(*done[i]));
  }
  return replies;
}

void ModelParallelCoordinator::add_link_metrics(Metrics& line, const std::vector<Message>& done, bool direct) const {
  line.emplace_back("topology", direct ? plan_.links : std::string("star"));
  if (!direct) return;
  double bytes = 0;
  for (const auto& m : done) bytes += m.metric_or("peer_bytes_sent", 0);
  line.emplace_back("peer_bytes", static_cast<int64_t>(bytes));
}

std::pair<NamedTensors, NamedTensors> ModelParallelCoordinator::split_reply(const Message& reply) {
  return params_and_opt_state(reply.tensors, {"loss", "examples"});
}

Metrics ModelParallelCoordinator::loss_metrics(const RunContext& ctx, const RoundSteps& steps, const Message& reply,
                                               const std::string& who) const {
  const uint32_t round = steps.round;
  const int64_t first = steps.first, count = steps.count;
  auto find = [&](const char* name) {
    for (const auto& [n, t] : reply.tensors) {
      if (n == name) return t;
    }
    return at::Tensor();
  };
  const at::Tensor loss = find("loss"), examples = find("examples");
  check_losses(loss, examples, count, who);
  append_losses(ctx.out_dir, round, first, loss, examples);
  const auto [first_loss, mean_loss] = loss_summary(loss, examples);
  Metrics line;
  line.emplace_back("status", std::string("ok"));
  line.emplace_back("first_step", first);
  line.emplace_back("steps", count);
  line.emplace_back("train_loss", first_loss);
  line.emplace_back("train_loss_mean", mean_loss);
  line.emplace_back("train_examples", examples.sum().item<int64_t>());
  line.emplace_back("workers_asked", static_cast<int64_t>(plan_.parts));
  line.emplace_back("workers_ok", static_cast<int64_t>(plan_.parts));
  line.emplace_back("workers_failed", int64_t{0});
  return line;
}

ModelParallelWorker::ModelParallelWorker(const Job& job, ScheduleOptions schedule, OptimizerOptions optim,
                                         const std::string& strategy, bool closed)
    : job_(job), schedule_(std::move(schedule)), optim_(std::move(optim)), beat_(strategy + ".progress"),
      closed_(closed) {
  check_loss_name(job.loss);
}

Message ModelParallelWorker::handle(const Message& request, WorkerContext& ctx, WorkerLink& link) {
  try {
    Message reply = run_part(request, ctx, link);
    if (ring_) {
      // The last frames (a last gradient down the chain, a part passed on) reach the kernel
      // before the links are let go.
      ring_->wait([&] { return writes_pending_ == 0; }, Clock::now() + timeout_, "sending the round's last frames");
      reply.metrics["peer_bytes_sent"] = static_cast<double>(ring_->bytes_sent());
      reply.metrics["peer_bytes_received"] = static_cast<double>(ring_->bytes_received());
      ring_.reset();  // its links close when the next ones form
    }
    peer_inbox_.clear();
    return reply;
  } catch (const std::exception& e) {
    if (ring_) ring_->abort(e.what());  // the neighbours learn at once, not at their timeout
    ring_.reset();
    peer_inbox_.clear();
    throw;
  }
}

RunIns ModelParallelWorker::begin(const Message& request, WorkerContext& ctx, WorkerLink& link,
                                  const std::string& run_kind) {
  RunIns run = RunIns::decode(request, run_kind);
  link_ = &link;
  name_ = ctx.name;
  timeout_ = schedule_.step_timeout_ms();
  compute_s_ = wait_s_ = 0;
  peer_inbox_.clear();
  writes_pending_ = 0;
  beat_.start(timeout_);
  ring_ = join_links(request, ctx.peers, ctx.name, static_cast<size_t>(run.rank), static_cast<size_t>(run.world),
                     timeout_, closed_);
  if (ring_) {
    const auto take = [this](transport::Envelope&& env) {
      if (env.error) return ring_->fail(fmt::format("{} reported: {}", env.sender, env.error->message));
      const std::string from = env.sender;
      try {
        peer_inbox_.push_back(from_envelope(std::move(env)));
      } catch (const std::exception& e) {
        ring_->fail(fmt::format("unusable frame from {}: {}", from, e.what()));
      }
    };
    ring_->on_frame(take);
    ring_->on_frame_from_next(take);
  }
  return run;
}

void ModelParallelWorker::send_peer(bool next, Message m) {
  if (m.sender.empty()) m.sender = name_;  // a message passed on keeps its origin's name
  transport::Envelope env = to_envelope(m);
  ++writes_pending_;
  auto written = [this] { --writes_pending_; };
  if (next) {
    ring_->send(env, written);
  } else {
    ring_->send_prev(env, written);
  }
  ring_->progress();  // the kernel takes what it can now; the rest goes while this worker waits
}

void ModelParallelWorker::send_next(Message m) { send_peer(true, std::move(m)); }
void ModelParallelWorker::send_prev(Message m) { send_peer(false, std::move(m)); }

Message ModelParallelWorker::await_peer(const std::function<bool(const Message&)>& wanted,
                                        const std::function<void(const Message&)>& keep, const std::string& what) {
  size_t checked = 0;  // messages of the inbox already offered to `wanted` and `keep`
  const auto deadline = Clock::now() + timeout_;
  const auto t0 = Clock::now();
  for (;;) {
    for (size_t i = 0; i < peer_inbox_.size(); ++i) {
      if (wanted(peer_inbox_[i])) {
        Message m = std::move(peer_inbox_[i]);
        peer_inbox_.erase(peer_inbox_.begin() + static_cast<std::ptrdiff_t>(i));
        wait_s_ += Seconds(Clock::now() - t0).count();
        return m;
      }
      if (i >= checked) keep(peer_inbox_[i]);
    }
    checked = peer_inbox_.size();
    ring_->wait([&] { return peer_inbox_.size() > checked; }, deadline, what);
  }
}

void ModelParallelWorker::heartbeat(int64_t step) {
  if (ring_) beat_.after_step(*link_, step);
}

void ModelParallelWorker::draw_batches(const WorkerContext& ctx, const std::string& who) {
  FEDRA_REQUIRE(ctx.data != nullptr && ctx.data->size() > 0, "worker {} ({}) has no training data", ctx.name, who);
  if (!batches_) batches_.emplace(enum_name(schedule_.batches()), schedule_.batch_size(), job_.seed, ctx.name, 0);
}

void ModelParallelWorker::set_params(std::vector<std::string> names, std::vector<at::Tensor> params,
                                     const NamedTensors& opt_state) {
  names_ = std::move(names);
  params_ = std::move(params);
  std::vector<at::Tensor> views;
  for (const auto& p : params_) views.push_back(p.detach());
  optimizer_.emplace(OptimizerConfig::from(optim_), names_, views);
  if (!opt_state.empty()) optimizer_->load_state(opt_state);
}

void ModelParallelWorker::apply_gradients() {
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i) {
    const at::Tensor& g = params_[i].grad();
    optimizer_->step(i, g.defined() ? g : at::zeros_like(params_[i]));
    params_[i].mutable_grad() = at::Tensor();
  }
}

Message ModelParallelWorker::done(const std::string& kind, uint32_t round, NamedTensors extra) const {
  Message reply(kind, round);
  NamedTensors trained;
  for (size_t i = 0; i < names_.size(); ++i) trained.emplace_back(names_[i], params_[i].detach());
  append_params_and_opt_state(reply.tensors, trained, optimizer_->state());
  for (auto& t : extra) reply.tensors.push_back(std::move(t));
  return reply;
}

}  // namespace fedra
