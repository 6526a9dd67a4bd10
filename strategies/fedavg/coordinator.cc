// FedAvg's coordinator half.
#include <chrono>

#include <torch/torch.h>

#include "core/model.h"
#include "core/tensor_checks.h"
#include "core/training.h"
#include "strategies/fedavg/fedavg.h"

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
  return state;
}

void FedAvgCoordinator::restore(NamedTensors state) {
  NamedTensors model, server;
  for (auto& [name, t] : state) (ServerOptimizer::is_state(name) ? server : model).emplace_back(name, std::move(t));
  check_layout(global_, model);  // the checkpoint must be of this model
  global_ = std::move(model);
  server_.load_state(server);
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
  if (options_.testing().names(worker.name)) {
    ins.attack = options_.testing().attack();
    ins.attack_scale = options_.testing().attack_scale();
  }
  ins.seed = worker_seed(job_.seed, round, worker.name);
  return ins;
}

Message FedAvgCoordinator::configure_fit(uint32_t round, const WorkerInfo& worker) {
  return configure(round, worker).encode();
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
  if (options_.robust().clip_norm() > 0) clip_to_norm(global_, result.weights, options_.robust().clip_norm());
  const auto n = static_cast<double>(result.num_examples);
  const double loss = result.train_loss;
  worker_train_s_ = std::max(worker_train_s_, result.train_s);
  worker_load_s_ = std::max(worker_load_s_, result.load_s);
  accumulate(worker, std::move(result));
  // Only reached when the result was taken.
  accumulate_s_ += seconds_since(t0);
  loss_sum_ += loss * n;
  weight_sum_ += n;
  examples_ += static_cast<int64_t>(n);
  ++accepted_;
}

void FedAvgCoordinator::accumulate(const WorkerInfo& worker, FitRes&& result) {
  if (options_.robust().holds_updates()) {
    double bytes = 0;
    for (const auto& [name, t] : result.weights) bytes += static_cast<double>(t.nbytes());
    if (held_bytes_ + bytes > options_.robust().hold_budget_mb() * 1e6) {
      ++over_budget_;  // the round fails in aggregate(), saying why
      return;
    }
    held_bytes_ += bytes;
    held_.push_back(std::move(result.weights));  // may reference the received frame: no copy
    return;
  }
  try {
    average_.add(result.weights, static_cast<double>(result.num_examples), /*verified=*/true);
  } catch (const Error& e) {
    FEDRA_FAIL("rejected update from {}: {}", worker.name, e.what());
  }
}

void FedAvgCoordinator::drop_held() {
  held_.clear();
  held_bytes_ = 0;
  over_budget_ = 0;
}

NamedTensors FedAvgCoordinator::aggregate(uint32_t round) {
  if (!options_.robust().holds_updates()) return average_.take_average();
  std::vector<NamedTensors> held = std::move(held_);
  const size_t refused = over_budget_;
  drop_held();
  FEDRA_REQUIRE(refused == 0,
                "round {}: aggregate={} holds every update, and {} more would exceed fedavg.hold_budget_mb = {} "
                "({} held); raise the budget, sample fewer workers (fraction) or use aggregate=mean",
                round, enum_name(options_.robust().aggregate()), refused, options_.robust().hold_budget_mb(),
                held.size());
  return robust_aggregate(options_.robust(), held);
}

void FedAvgCoordinator::server_update(uint32_t, NamedTensors aggregate) {
  server_.step(global_, aggregate);
  set_global(std::move(aggregate));
}

Metrics FedAvgCoordinator::aggregate_fit(uint32_t round, const std::vector<Failure>& failures) {
  const size_t got = accepted_;
  const double loss = weight_sum_ > 0 ? loss_sum_ / weight_sum_ : 0;
  const int64_t examples = examples_;
  accepted_ = 0;
  loss_sum_ = weight_sum_ = 0;
  examples_ = 0;
  if (static_cast<int64_t>(got) < options_.min_results()) {
    if (average_.count() > 0) average_.take_average();  // discard the partial sum
    drop_held();
    FEDRA_FAIL("round {}: {} result(s) accepted, min_results is {}{}", round, got, options_.min_results(),
               failures.empty() ? std::string() : "; failures: " + describe_failures(failures));
  }
  const auto t0 = std::chrono::steady_clock::now();
  server_update(round, aggregate(round));
  Metrics m = {{"train_loss", loss},
               {"train_examples", examples},
               {"accumulate_s", accumulate_s_},
               {"average_s", seconds_since(t0)},
               {"worker_load_s_max", worker_load_s_},
               {"worker_train_s_max", worker_train_s_}};
  accumulate_s_ = worker_train_s_ = worker_load_s_ = 0;
  for (auto& extra : round_metrics(round)) m.push_back(std::move(extra));
  return m;
}

Metrics FedAvgCoordinator::evaluate(uint32_t, RunContext& ctx) {
  if (ctx.test_set == nullptr) return {};
  load_model_state(*model_, global_);
  const EvalStats s = evaluate_model(model_, *ctx.test_set, job_.loss);
  return {{"test_accuracy", s.accuracy}, {"test_loss", s.loss}};
}

}  // namespace fedra::fedavg
