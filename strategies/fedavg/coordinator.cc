// FedAvg's coordinator half.
#include <algorithm>
#include <chrono>
#include <map>

#include <spdlog/spdlog.h>

#include <torch/torch.h>

#include "core/data/batching.h"
#include "core/data/tensor_checks.h"
#include "core/model/export.h"
#include "core/model/model.h"
#include "core/model/script_model.h"
#include "core/system/process.h"
#include "core/training/training.h"
#include "strategies/fedavg/fedavg.h"
#include "strategies/run_message.h"

namespace fedra::fedavg {

namespace {
double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

FedAvgCoordinator::FedAvgCoordinator(const Job& job, FedAvgOptions options)
    : job_(job), options_(std::move(options)), server_(options_.server()) {
  check_loss_name(job.loss);
  model_ = build_model(job.model, job.seed);
  for (auto& [name, t] : model_state(*model_)) global_.emplace_back(name, t.clone());
  for (const auto& [name, t] : global_) model_bytes_ += t.nbytes();
  if (options_.scaffold()) {
    for (const auto& p : model_->named_parameters()) control_.emplace_back(p.key(), torch::zeros_like(p.value()));
  }
  FEDRA_REQUIRE(!options_.local_bn() || !batchnorm_tensor_names(*model_).empty(),
                "fedavg.local_bn keeps batch norm layers local, and model '{}' has none", job.model);
  dp_clip_ = options_.privacy().dp_clip();
  if (options_.privacy().on()) dp_gen_ = dp_generator(options_.privacy().dp_seed());
  fleet_ = std::make_shared<Fleet>(options_.fleet().fleet(), job.seed);
}

bool FedAvgCoordinator::fleet_on() const { return fleet_->active() || options_.round_deadline() > 0; }

double FedAvgCoordinator::fleet_time() const {
  if (options_.fleet().virtual_clock()) return fleet_now_;
  return fleet_now_ + (fleet_started_ ? seconds_since(fleet_wall_start_) : 0.0);
}

// A result of a fleet's device: its duration (simulated from the steps it took, or measured), then
// whether it went offline first (lost) or missed the round deadline (late, virtual clock).
void FedAvgCoordinator::fleet_result(const WorkerInfo& worker, int64_t steps) {
  const double t = round_start_;
  if (!options_.fleet().virtual_clock()) {
    const double now = fleet_time();
    if (fleet_->offline_at(worker.name, t) < now) {
      ++fleet_lost_;
      round_device_[worker.name] += now - t;
      FEDRA_FAIL("{} went offline (fleet churn) while it trained: its update is lost", worker.name);
    }
    round_device_[worker.name] += now - t;
    round_span_ = std::max(round_span_, now - t);
    return;
  }
  const double d = fleet_->compute_s(worker.name, steps) + fleet_->network_s(worker.name, model_bytes_, model_bytes_);
  const double deadline = options_.round_deadline();
  const double off = fleet_->offline_at(worker.name, t) - t;
  if (off < d && (deadline == 0 || off < deadline)) {
    ++fleet_lost_;
    round_device_[worker.name] += off;
    FEDRA_FAIL("{} went offline {:.1f} simulated seconds into its {:.1f} s update (fleet churn): the update is lost",
               worker.name, off, d);
  }
  if (deadline > 0 && d > deadline) {
    ++fleet_late_;
    round_device_[worker.name] += deadline;
    FEDRA_FAIL("{}'s update takes {:.1f} simulated seconds, past round_deadline {} s: dropped, its work wasted",
               worker.name, d, deadline);
  }
  round_device_[worker.name] += d;
  round_span_ = std::max(round_span_, d);
}

std::vector<WorkerId> FedAvgCoordinator::select_workers(uint32_t round, Cohort& cohort, const RunContext& ctx) {
  connected_ = cohort.size();
  std::vector<WorkerId> chosen = RoundStrategy::select_workers(round, cohort, ctx);
  refusal_.clear();
  if (fleet_on()) {
    if (!fleet_started_) {
      fleet_started_ = true;
      fleet_wall_start_ = std::chrono::steady_clock::now();
    }
    round_start_ = fleet_time();
    round_span_ = 0;
    fleet_late_ = fleet_lost_ = fleet_offline_ = 0;
    // Devices the fleet has offline when the round begins are not asked.
    std::map<WorkerId, std::string> names;
    for (const WorkerInfo& w : cohort.workers()) names[w.id] = w.name;
    std::vector<WorkerId> online;
    for (WorkerId id : chosen) {
      if (fleet_->online(names[id], round_start_)) {
        online.push_back(id);
      } else {
        ++fleet_offline_;
      }
    }
    chosen = std::move(online);
  }
  if (options_.robust().holds_updates()) {
    // Refused up front: nobody trains for a round whose updates could not all be held.
    const auto model_bytes = static_cast<double>(model_bytes_);
    const double need = model_bytes * static_cast<double>(chosen.size());
    if (need > options_.robust().hold_budget_mb() * 1e6) {
      refusal_ = fmt::format(
          "round {}: aggregate={} holds every update, and {} updates of {:.1f} MB need {:.1f} MB, over "
          "fedavg.hold_budget_mb = {}; raise the budget, sample fewer workers (fraction) or use aggregate=mean",
          round, enum_name(options_.robust().aggregate()), chosen.size(), model_bytes / 1e6, need / 1e6,
          options_.robust().hold_budget_mb());
      chosen.clear();
    }
  }
  sampled_ = chosen.size();
  if (options_.privacy().on()) {
    dp_mean_.reset(global_);
    dp_unclipped_ = 0;
  }
  return chosen;
}

Metrics FedAvgCoordinator::standing_metrics(uint32_t) {
  Metrics m;
  if (fleet_on()) {
    m = {{"virtual_time_s", options_.fleet().virtual_clock() ? fleet_time() : 0.0},
         {"fleet_time_s", fleet_time()},
         {"device_s", device_s_},
         {"updates_late", fleet_late_},
         {"updates_lost", fleet_lost_},
         {"workers_offline", fleet_offline_}};
  }
  const DpOptions& dp = options_.privacy();
  if (!dp.on()) return m;
  m.insert(m.end(), {{"dp_epsilon", accountant_.epsilon(dp.dp_delta())},
                     {"dp_delta", dp.dp_delta()},
                     {"dp_noise", dp.dp_noise()},
                     {"dp_clip", dp_clip_}});
  if (dp.dp_adaptive() && dp_last_unclipped_fraction_ >= 0) {
    m.emplace_back("dp_unclipped_fraction", dp_last_unclipped_fraction_);
  }
  return m;
}

void FedAvgCoordinator::set_global(NamedTensors next) {
  check_layout(global_, next);
  NamedTensors previous = std::move(global_);
  global_ = std::move(next);
  average_.recycle(std::move(previous));
}

NamedTensors FedAvgCoordinator::checkpoint_state() const {
  NamedTensors state = global_;
  for (auto& t : server_.state()) state.push_back(std::move(t));
  for (const auto& [name, c] : control_) state.emplace_back(kControlStatePrefix + name, c);
  if (options_.privacy().on()) {
    state.emplace_back("dp/rdp", at::tensor(accountant_.rdp(), at::kDouble));
    state.emplace_back("dp/clip", at::tensor({dp_clip_}, at::kDouble));
  }
  if (fleet_on()) state.emplace_back("fleet/state", at::tensor({fleet_time(), device_s_}, at::kDouble));
  return state;
}

void FedAvgCoordinator::restore(NamedTensors state) {
  NamedTensors control = take_prefixed(state, kControlStatePrefix);
  for (auto& [name, t] : take_prefixed(state, "fleet/")) {
    if (name != "state" || t.numel() != 2) continue;
    const at::Tensor v = t.to(at::kDouble).contiguous();
    fleet_now_ = v.data_ptr<double>()[0];  // the clock continues where the checkpoint left it
    device_s_ = v.data_ptr<double>()[1];
  }
  for (auto& [name, t] : take_prefixed(state, "dp/")) {
    if (name == "rdp") {
      const at::Tensor r = t.to(at::kDouble).contiguous();
      accountant_.set_rdp(std::vector<double>(r.data_ptr<double>(), r.data_ptr<double>() + r.numel()));
    } else if (name == "clip") {
      dp_clip_ = t.item<double>();
    }
  }
  NamedTensors model, server;
  for (auto& [name, t] : state) (ServerOptimizer::is_state(name) ? server : model).emplace_back(name, std::move(t));
  check_layout(global_, model);  // the checkpoint must be of this model
  global_ = std::move(model);
  server_.load_state(server);
  if (options_.scaffold()) {
    FEDRA_REQUIRE(!control.empty(), "the checkpoint has no SCAFFOLD control variate: it was written without "
                  "fedavg.scaffold; resume with the options of the first run");
    check_layout(control_, control);
    control_ = std::move(control);
  }
}

FitIns FedAvgCoordinator::configure(uint32_t round, const WorkerInfo& worker) {
  FitIns ins;
  ins.round = round;
  ins.weights = global_;  // shared, not copied: the frames reference this memory
  ins.local_epochs = options_.local_epochs();
  ins.local_steps = options_.local_steps();
  ins.batch_size = options_.batch_size();
  ins.optim = options_.optim();
  ins.proximal_mu = options_.proximal_mu();
  ins.scaffold = options_.scaffold();
  ins.local_bn = options_.local_bn();
  if (ins.scaffold) ins.control = control_;  // shared, not copied
  const DpOptions& dp = options_.privacy();
  if (dp.dp() == DpMode::kClient) {
    // Each of the m sampled workers adds N(0, (z_u C)^2 / m): the sum carries N(0, (z_u C)^2).
    ins.dp_clip = dp_clip_;
    ins.dp_noise_std = dp_noise_for(dp, static_cast<int64_t>(sampled_)).update * dp_clip_ /
                       std::sqrt(static_cast<double>(std::max<size_t>(sampled_, 1)));
    ins.dp_seed = dp.dp_seed() > 0 ? worker_seed(static_cast<uint64_t>(dp.dp_seed()), round, worker.name) : 0;
  }
  if (options_.testing().names(worker.name)) {
    ins.attack = options_.testing().attack();
    ins.attack_scale = options_.testing().attack_scale();
  }
  ins.seed = worker_seed(job_.seed, round, worker.name);
  if (fleet_->active() && !options_.fleet().virtual_clock()) {
    ins.sleep_factor = std::max(0.0, fleet_->profile(worker.name).slowdown - 1.0);
    ins.net_s = fleet_->network_s(worker.name, model_bytes_, model_bytes_);
  }
  return ins;
}

Message FedAvgCoordinator::configure_fit(uint32_t round, const WorkerInfo& worker) {
  return configure(round, worker).encode();
}

std::vector<Failure> FedAvgCoordinator::run_fit(uint32_t round, Cohort& cohort, std::vector<Instruction> instructions,
                                                Deadline deadline, size_t& accepted) {
  const double cpu0 = thread_cpu_seconds();
  std::vector<Failure> failures = options_.secure().secagg()
                                      ? run_secagg(round, cohort, std::move(instructions), deadline, accepted)
                                      : RoundStrategy::run_fit(round, cohort, std::move(instructions), deadline, accepted);
  fit_cpu_s_ = thread_cpu_seconds() - cpu0;
  return failures;
}

std::vector<Failure> FedAvgCoordinator::run_secagg(uint32_t round, Cohort& cohort, std::vector<Instruction> instructions,
                                                   Deadline deadline, size_t& accepted) {
  // DP-FedAvg's mean is unweighted (each clipped update counts once); FedAvg's weighs by examples.
  const bool unit_weights = options_.privacy().on();
  std::map<WorkerId, WorkerInfo> connected;
  for (WorkerInfo& w : cohort.workers()) connected.emplace(w.id, std::move(w));
  std::map<WorkerId, std::pair<std::string, double>> asked;
  for (const Instruction& ins : instructions) {
    const auto it = connected.find(ins.worker);
    if (it == connected.end()) continue;
    asked[ins.worker] = {it->second.name,
                         unit_weights ? 1.0 : static_cast<double>(std::max<int64_t>(it->second.num_examples, 1))};
  }
  secagg_.emplace();
  try {
    const uint64_t graph_seed = (job_.seed ^ 0x5ECA66ULL) * 0x9E3779B97F4A7C15ULL + round;
    SecAggRound protocol(round, options_.secure(), global_, std::move(asked), graph_seed);
    const double training_s = std::max(1.0, std::chrono::duration<double>(deadline - Clock::now()).count());
    std::map<WorkerId, std::string> names;
    for (Instruction& ins : instructions) {
      SecAggIns s = protocol.instruction(ins.worker, training_s);
      const std::string& name = connected.count(ins.worker) ? connected.at(ins.worker).name : std::string();
      // NAME:VALUE or NAME:VALUE@ROUND (that round only).
      const auto in_round = [&](std::string v) {
        const auto at = v.find('@');
        if (at == std::string::npos) return v;
        return v.substr(at + 1) == std::to_string(round) ? v.substr(0, at) : std::string();
      };
      s.drop = in_round(FedAvgTesting::value_for(options_.testing().secagg_drop(), name));
      s.cheat = in_round(FedAvgTesting::value_for(options_.testing().secagg_cheat(), name));
      s.encode(ins.message);
    }
    std::vector<Failure> failures = protocol.run(cohort, std::move(instructions), deadline);
    *secagg_ = std::move(protocol.result());
    const SecAggRound::Result& r = *secagg_;
    if (r.ok) {
      for (const auto& [name, f] : r.figures) {
        const double n = f.count("num_examples") ? f.at("num_examples") : 0;
        loss_sum_ += (f.count("train_loss") ? f.at("train_loss") : 0) * n;
        weight_sum_ += n;
        examples_ += static_cast<int64_t>(n);
        worker_train_s_ = std::max(worker_train_s_, f.count("train_s") ? f.at("train_s") : 0);
        worker_load_s_ = std::max(worker_load_s_, f.count("load_s") ? f.at("load_s") : 0);
        if (f.count("dp_unclipped")) dp_unclipped_ += f.at("dp_unclipped");
      }
      accepted_ = r.figures.size();
      accepted = accepted_;
    }
    return failures;
  } catch (const Error& e) {
    secagg_->ok = false;
    secagg_->failure = e.what();
    return {};
  }
}

void FedAvgCoordinator::accumulate_fit(uint32_t round, const WorkerInfo& worker, Message&& message) {
  FitRes result = FitRes::decode(std::move(message), round, worker.name);
  const auto t0 = std::chrono::steady_clock::now();
  try {
    check_layout(global_, result.weights);
    check_finite(result.weights);
  } catch (const Error& e) {
    FEDRA_FAIL("rejected update from {}: {}", worker.name, e.what());
  }
  NamedTensors delta_control = std::move(result.delta_control);
  if (options_.scaffold()) check_control(worker, delta_control);
  if (fleet_on()) fleet_result(worker, result.steps);
  if (options_.robust().clip_norm() > 0) clip_to_norm(global_, result.weights, options_.robust().clip_norm());
  const auto n = static_cast<double>(result.num_examples);
  const double loss = result.train_loss;
  worker_train_s_ = std::max(worker_train_s_, result.train_s);
  worker_load_s_ = std::max(worker_load_s_, result.load_s);
  const DpOptions& dp = options_.privacy();
  if (dp.dp() == DpMode::kServer) {
    dp_unclipped_ += dp_mean_.add(result.weights, dp_clip_) <= dp_clip_ ? 1 : 0;
  } else if (dp.dp() == DpMode::kClient) {
    FEDRA_REQUIRE(result.dp_unclipped == 0 || result.dp_unclipped == 1,
                  "rejected update from {}: under dp=client its 'fedavg.fit_result' needs dp_unclipped 0 or 1", worker.name);
    dp_mean_.add(result.weights, 0);  // clipped and noised by the worker
    dp_unclipped_ += static_cast<double>(result.dp_unclipped);
  } else {
    accumulate(worker, std::move(result));
  }
  // Only reached when the result was taken: its control variate is added with it, or not at all.
  if (options_.scaffold()) add_control(delta_control);
  accumulate_s_ += seconds_since(t0);
  loss_sum_ += loss * n;
  weight_sum_ += n;
  examples_ += static_cast<int64_t>(n);
  ++accepted_;
}

// SCAFFOLD: a worker's delta c_i must fit the control variate (a bad one rejects the update too);
// it joins the round's sum only once the update itself was taken.
void FedAvgCoordinator::check_control(const WorkerInfo& worker, const NamedTensors& delta) const {
  try {
    FEDRA_REQUIRE(!delta.empty(), "it sent no SCAFFOLD control variate (scaffold.dc/...) though asked to");
    check_layout(control_, delta);
    check_finite(delta);
  } catch (const Error& e) {
    FEDRA_FAIL("rejected update from {}: {}", worker.name, e.what());
  }
}

void FedAvgCoordinator::add_control(const NamedTensors& delta) {
  if (control_delta_sum_.empty()) {
    for (const auto& [name, d] : delta) control_delta_sum_.emplace_back(name, d.to(at::kDouble));
    return;
  }
  for (size_t i = 0; i < delta.size(); ++i) control_delta_sum_[i].second.add_(delta[i].second);
}

void FedAvgCoordinator::accumulate(const WorkerInfo& worker, FitRes&& result) {
  if (options_.robust().holds_updates()) {
    // Within hold_budget_mb: select_workers asked no more workers than the budget holds.
    held_.push_back(std::move(result.weights));  // may reference the received frame: no copy
    return;
  }
  try {
    average_.add(result.weights, static_cast<double>(result.num_examples), /*verified=*/true);
  } catch (const Error& e) {
    FEDRA_FAIL("rejected update from {}: {}", worker.name, e.what());
  }
}

// DP-FedAvg: global + (sum of clipped updates + noise) / sampled, then adaptive clipping's step.
NamedTensors FedAvgCoordinator::dp_aggregate() {
  const DpOptions& dp = options_.privacy();
  const auto m = static_cast<int64_t>(sampled_);
  const DpNoise noise = dp_noise_for(dp, m);
  const double noise_std = dp.dp() == DpMode::kServer ? noise.update * dp_clip_ : 0.0;
  NamedTensors next = dp_mean_.finish(noise_std, static_cast<double>(m), dp_gen_);
  if (dp.dp_adaptive()) {
    const double noisy = dp_unclipped_ + at::empty({1}, at::kDouble).normal_(0, noise.count, dp_gen_).item<double>();
    dp_last_unclipped_fraction_ = noisy / static_cast<double>(m);
    dp_clip_ *= std::exp(-dp.dp_clip_lr() * (dp_last_unclipped_fraction_ - dp.dp_quantile()));
  }
  return next;
}

NamedTensors FedAvgCoordinator::secagg_aggregate() {
  const SecAggRound::Result& r = *secagg_;
  // DP-FedAvg: the sum of clipped, noised updates over the sampled workers (as dp_aggregate).
  const double denom = options_.privacy().on() ? static_cast<double>(std::max<size_t>(sampled_, 1)) : r.weight_sum;
  NamedTensors next;
  size_t j = 0;
  for (const auto& [name, g] : global_) {
    if (g.is_floating_point()) {
      next.emplace_back(name, (g.to(at::kDouble) + r.sum[j++].second / denom).to(g.scalar_type()));
    } else {
      next.emplace_back(name, g.clone());  // integer buffers (batch counts) are not summed: kept
    }
  }
  return next;
}

NamedTensors FedAvgCoordinator::aggregate(uint32_t) {
  if (!options_.robust().holds_updates()) return average_.take_average();
  std::vector<NamedTensors> held = std::move(held_);
  held_.clear();
  return robust_aggregate(options_.robust(), held);
}

void FedAvgCoordinator::server_update(uint32_t, NamedTensors aggregate) {
  server_.step(global_, aggregate);
  set_global(std::move(aggregate));
}

Metrics FedAvgCoordinator::aggregate_fit(uint32_t round, const std::vector<Failure>& failures) {
  // Summed in name order, not arrival order, so the total does not depend on which process ran faster.
  for (const auto& [name, seconds] : round_device_) device_s_ += seconds;
  round_device_.clear();
  if (fleet_on() && options_.fleet().virtual_clock()) {
    // The round lasts as long as its slowest accepted update, or until the deadline when one was
    // late; a device lost to churn keeps it waiting until the deadline, or round_timeout.
    double span = round_span_;
    if (fleet_late_ > 0) span = std::max(span, options_.round_deadline());
    if (fleet_lost_ > 0) {
      span = std::max(span, options_.round_deadline() > 0 ? options_.round_deadline() : options_.round_timeout());
    }
    fleet_now_ += span;
  }
  const size_t got = accepted_;
  const double loss = weight_sum_ > 0 ? loss_sum_ / weight_sum_ : 0;
  const int64_t examples = examples_;
  accepted_ = 0;
  loss_sum_ = weight_sum_ = 0;
  examples_ = 0;
  if (!refusal_.empty()) FEDRA_FAIL("{}", refusal_);
  std::optional<SecAggRound::Result> secagg = std::move(secagg_);
  secagg_.reset();
  Metrics secagg_figures;
  if (secagg) {
    secagg_figures = {{"secagg_dropped", static_cast<int64_t>(secagg->dropped)},
                      {"secagg_refused", static_cast<int64_t>(secagg->refused)},
                      {"secagg_worker_cpu_s_max", secagg->worker_cpu_s},
                      {"secagg_clipped", static_cast<int64_t>(secagg->clipped)}};
    FEDRA_REQUIRE(secagg->ok, "round {}: {}", round, secagg->failure);
  }
  const DpOptions& dp = options_.privacy();
  if (dp.on() && got > 0) {
    // Charged whenever updates were taken, even if the round then fails: the workers released them.
    accountant_.add(static_cast<double>(sampled_) / static_cast<double>(std::max(connected_, sampled_)), dp.dp_noise());
  }
  if (static_cast<int64_t>(got) < options_.min_results()) {
    if (average_.count() > 0) average_.take_average();  // discard the partial sum
    held_.clear();
    control_delta_sum_.clear();
    FEDRA_FAIL("round {}: {} result(s) accepted, min_results is {}{}", round, got, options_.min_results(),
               failures.empty() ? std::string() : "; failures: " + describe_failures(failures));
  }
  const auto t0 = std::chrono::steady_clock::now();
  if (secagg) secagg_ = std::move(secagg);  // read by secagg_aggregate
  server_update(round, secagg_ ? secagg_aggregate() : dp.on() ? dp_aggregate() : aggregate(round));
  secagg_.reset();
  if (!control_delta_sum_.empty()) {
    // c <- c + (1/N) sum over the round's workers of delta c_i (Karimireddy et al., Algorithm 1),
    // N the workers connected when the round began.
    const double n = static_cast<double>(std::max<size_t>(connected_, got));
    for (size_t i = 0; i < control_.size(); ++i) {
      control_[i].second = (control_[i].second + control_delta_sum_[i].second / n).to(control_[i].second.scalar_type());
    }
    control_delta_sum_.clear();
  }
  Metrics m = {{"train_loss", loss},
               {"train_examples", examples},
               {"accumulate_s", accumulate_s_},
               {"average_s", seconds_since(t0)},
               {"worker_load_s_max", worker_load_s_},
               {"worker_train_s_max", worker_train_s_},
               {"fit_cpu_s", fit_cpu_s_}};
  accumulate_s_ = worker_train_s_ = worker_load_s_ = 0;
  for (auto& f : secagg_figures) m.push_back(std::move(f));
  for (auto& extra : round_metrics(round)) m.push_back(std::move(extra));
  return m;
}

void FedAvgCoordinator::finished(RunContext& ctx) {
  if (ctx.out_dir.empty()) return;
  load_model_state(*model_, global_);
  save_trained_model(ctx.out_dir, model_);
}

Metrics FedAvgCoordinator::evaluate(uint32_t, RunContext& ctx) {
  if (ctx.test_set == nullptr) return {};
  load_model_state(*model_, global_);
  const EvalStats s = evaluate_model(model_, *ctx.test_set, job_.loss);
  const auto scores = eval_metrics(s);
  return {scores.begin(), scores.end()};
}

Metrics FedAvgCoordinator::evaluate_federated(uint32_t round, uint32_t total, Cohort& cohort, RunContext& ctx) {
  const FedEvalOptions& o = options_.fed_eval();
  if (!o.due(round, round == total)) return {};
  // A draw of its own, different from the round's fit sample.
  const uint64_t seed = (ctx.job.seed ^ 0xE7A1ULL) * 0x9E3779B97F4A7C15ULL + round;
  Message ask(kEvaluate, round);
  ask.tensors = global_;  // shared, not copied
  std::vector<Instruction> instructions;
  for (WorkerId id : cohort.sample(o.fed_eval_fraction(), 1, seed)) instructions.push_back({id, ask});
  const size_t asked = instructions.size();
  struct Reply {
    std::string worker;
    EvaluateRes res;
  };
  std::vector<Reply> replies;
  std::vector<Failure> failures = cohort.request_all(
      std::move(instructions), Clock::now() + round_config().fit_timeout, [&](const WorkerInfo& w, Message&& m) {
        EvaluateRes r = EvaluateRes::decode(std::move(m), round, w.name);
        if (!replies.empty()) {
          const auto& first = replies.front().res;
          FEDRA_REQUIRE(r.counts.size() == first.counts.size() &&
                            (r.counts.empty() || r.counts[0].second.sizes() == first.counts[0].second.sizes()),
                        "evaluation from {}: its class counts do not match {}'s", w.name, replies.front().worker);
          FEDRA_REQUIRE(r.extra.size() == first.extra.size(), "evaluation from {}: its metrics differ from {}'s",
                        w.name, replies.front().worker);
        }
        replies.push_back({w.name, std::move(r)});
      });
  for (const auto& f : failures) {
    spdlog::warn("round {}: federated evaluation on {} failed ({}): {}", round, f.name, error_kind_name(f.kind),
                 f.message);
  }
  Metrics m = {{"fed_eval_workers_asked", static_cast<int64_t>(asked)},
               {"fed_eval_workers_ok", static_cast<int64_t>(replies.size())},
               {"fed_eval_workers_failed", static_cast<int64_t>(failures.size())}};
  if (replies.empty()) return m;
  std::sort(replies.begin(), replies.end(), [](const Reply& a, const Reply& b) { return a.worker < b.worker; });
  int64_t examples = 0, correct = 0;
  double loss = 0;
  std::map<std::string, double> extra;
  at::Tensor class_examples, class_correct;
  std::vector<double> weights;
  std::string workers;
  for (const Reply& r : replies) {
    examples += r.res.num_examples;
    correct += r.res.correct;
    const auto n = static_cast<double>(r.res.num_examples);
    loss += r.res.loss * n;
    for (const auto& [name, value] : r.res.extra) extra[name] += value * n;
    if (!r.res.counts.empty()) {
      class_examples = class_examples.defined() ? class_examples + r.res.counts[0].second : r.res.counts[0].second.clone();
      class_correct = class_correct.defined() ? class_correct + r.res.counts[1].second : r.res.counts[1].second.clone();
    }
    weights.push_back(n);
    workers += (workers.empty() ? "" : ",") + r.worker;
  }
  for (double& w : weights) w /= static_cast<double>(examples);
  m.emplace_back("fed_eval_loss", loss / static_cast<double>(examples));
  m.emplace_back("fed_eval_accuracy", static_cast<double>(correct) / static_cast<double>(examples));
  m.emplace_back("fed_eval_examples", examples);
  m.emplace_back("fed_eval_workers", workers);
  m.emplace_back("fed_eval_weights", weights);
  if (class_examples.defined()) {
    std::vector<double> counts, accuracy;
    for (int64_t c = 0; c < class_examples.size(0); ++c) {
      const auto n = class_examples[c].item<int64_t>();
      counts.push_back(static_cast<double>(n));
      accuracy.push_back(n > 0 ? static_cast<double>(class_correct[c].item<int64_t>()) / static_cast<double>(n) : 0.0);
    }
    m.emplace_back("fed_eval_class_examples", counts);
    m.emplace_back("fed_eval_class_accuracy", accuracy);
  }
  for (const auto& [name, sum] : extra) m.emplace_back("fed_eval_" + name, sum / static_cast<double>(examples));
  return m;
}

}  // namespace fedra::fedavg
