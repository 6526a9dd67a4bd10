// FedAvg's options, instruction and result: each field written and read in one place.
#include "strategies/fedavg/fedavg.h"
#include "strategies/run_message.h"

#include <cmath>
#include <string_view>

#include <torch/torch.h>

namespace fedra::fedavg {

void FedAvgOptions::validate() const {
  FEDRA_REQUIRE(rounds_ >= 1, "fedavg.rounds must be >= 1, got {}", rounds_);
  FEDRA_REQUIRE(fraction_ > 0 && fraction_ <= 1, "fedavg.fraction must be in (0, 1], got {}", fraction_);
  FEDRA_REQUIRE(min_workers_ >= 1, "fedavg.min_workers must be >= 1, got {}", min_workers_);
  FEDRA_REQUIRE(min_results_ >= 1, "fedavg.min_results must be >= 1, got {}", min_results_);
  // Both 0 is allowed: no local training, the worker returns the model it received, which
  // measures what Fedra itself costs per round (benchmarks/fedavg_round.py).
  FEDRA_REQUIRE(local_epochs_ >= 0 && local_steps_ >= 0, "fedavg local_epochs and local_steps must be >= 0");
  FEDRA_REQUIRE(batch_size_ >= 1, "fedavg.batch_size must be >= 1, got {}", batch_size_);
  FEDRA_REQUIRE(proximal_mu_ >= 0, "fedavg.proximal_mu must be >= 0, got {}", proximal_mu_);
  FEDRA_REQUIRE(round_timeout_ > 0, "fedavg.round_timeout must be > 0 seconds, got {}", round_timeout_);
  FEDRA_REQUIRE(round_deadline_ >= 0, "fedavg.round_deadline must be >= 0 seconds (0: none), got {}", round_deadline_);
  FEDRA_REQUIRE(!secure_.secagg() || (fleet_.fleet() == "none" && round_deadline_ == 0),
                "fedavg.secagg with a simulated fleet or round_deadline: not supported (the coordinator cannot "
                "time each update it never sees); turn one of them off");
  FEDRA_REQUIRE(!scaffold_ || (optim_.optimizer() == OptimizerKind::kSgd && optim_.momentum() == 0),
                "fedavg.scaffold updates its control variates from the local steps' mean gradient "
                "(option II of Karimireddy et al. 2020), which holds for plain SGD only: set "
                "--fedavg.momentum 0 (and --fedavg.optimizer sgd)");
  FEDRA_REQUIRE(!privacy_.on() || robust_.aggregate() == Aggregator::kMean,
                "fedavg.dp needs aggregate=mean: its guarantee is for the noised mean of clipped updates, "
                "not for {}", enum_name(robust_.aggregate()));
  if (secure_.secagg()) {
    // The coordinator sees only the sum: whatever needs each update alone cannot run.
    FEDRA_REQUIRE(robust_.aggregate() == Aggregator::kMean && robust_.clip_norm() == 0,
                  "fedavg.secagg gives the coordinator the sum of the updates only, so it cannot take a robust "
                  "aggregate or clip each update (aggregate={}, clip_norm={}): use aggregate=mean, clip_norm 0",
                  enum_name(robust_.aggregate()), robust_.clip_norm());
    FEDRA_REQUIRE(privacy_.dp() != DpMode::kServer,
                  "fedavg.secagg with dp=server: the coordinator cannot clip updates it never sees; use dp=client "
                  "(each worker clips and noises its own update: distributed DP, docs/security.md)");
    FEDRA_REQUIRE(!privacy_.dp_adaptive(),
                  "fedavg.secagg with dp_adaptive: adaptive clipping needs each worker's clipped-or-not bit in the "
                  "clear; use a fixed dp_clip");
    FEDRA_REQUIRE(!scaffold_, "fedavg.secagg with scaffold: SCAFFOLD's control variates are not securely summed (yet); "
                  "turn one of them off");
  }
}

std::string FedAvgTesting::value_for(const std::string& list, const std::string& worker) {
  size_t start = 0;
  while (start < list.size()) {
    const size_t end = std::min(list.find(',', start), list.size());
    const std::string item = list.substr(start, end - start);
    const size_t colon = item.find(':');
    if (colon != std::string::npos && item.substr(0, colon) == worker) return item.substr(colon + 1);
    start = end + 1;
  }
  return "";
}

void FedEvalOptions::validate(const std::string& scope) const {
  FEDRA_REQUIRE(fed_eval_every_ >= 0, "{}.fed_eval_every must be >= 0 (0: never), got {}", scope, fed_eval_every_);
  FEDRA_REQUIRE(fed_eval_fraction_ > 0 && fed_eval_fraction_ <= 1, "{}.fed_eval_fraction must be in (0, 1], got {}",
                scope, fed_eval_fraction_);
}

bool FedAvgTesting::names(const std::string& worker) const {
  size_t start = 0;
  while (start <= byzantine_.size()) {
    const size_t end = std::min(byzantine_.find(',', start), byzantine_.size());
    if (byzantine_.substr(start, end - start) == worker) return true;
    start = end + 1;
  }
  return false;
}

RoundConfig FedAvgOptions::round_config() const {
  RoundConfig c;
  c.rounds = rounds_;
  c.fraction = fraction_;
  c.min_workers = min_workers_;
  // On the wall clock a round deadline is a shorter timeout; on the virtual clock the coordinator
  // applies it in simulated time (coordinator.cc, fleet_result).
  const double timeout = round_deadline_ > 0 && !fleet_.virtual_clock() ? std::min(round_deadline_, round_timeout_)
                                                                        : round_timeout_;
  c.fit_timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout * 1000));
  c.eval_every = eval_.eval_every();
  return c;
}

Message FitIns::encode() const {
  Message m(kFit, round);
  m.tensors = weights;
  m.options["local_epochs"] = std::to_string(local_epochs);
  m.options["local_steps"] = std::to_string(local_steps);
  m.options["batch_size"] = std::to_string(batch_size);
  for (const auto& [k, v] : options_to_map(optim)) m.options[k] = v;
  m.options["seed"] = std::to_string(seed);
  m.options["proximal_mu"] = fmt::format("{:.17g}", proximal_mu);
  if (dp_clip > 0) {
    m.options["dp.clip"] = fmt::format("{:.17g}", dp_clip);
    m.options["dp.noise_std"] = fmt::format("{:.17g}", dp_noise_std);
    m.options["dp.seed"] = std::to_string(dp_seed);
  }
  if (local_bn) m.options["local_bn"] = "true";
  if (scaffold) {
    m.options["scaffold"] = "true";
    append_prefixed(m.tensors, kControlPrefix, control);
  }
  if (attack != Attack::kNone) {
    m.options["testing.attack"] = enum_name(attack);
    m.options["testing.attack_scale"] = fmt::format("{:.17g}", attack_scale);
  }
  if (sleep_factor > 0 || net_s > 0) {
    m.metrics["fleet.sleep_factor"] = sleep_factor;
    m.metrics["fleet.net_s"] = net_s;
  }
  secagg.encode(m);
  return m;
}

FitIns FitIns::decode(const Message& m) {
  FEDRA_REQUIRE(m.kind == kFit, "a fedavg worker cannot handle '{}'", m.kind);
  m.require_options({"local_epochs", "local_steps", "batch_size", "seed", "proximal_mu"});
  const OptionMap o(kFit, m.options);
  FitIns ins;
  ins.round = m.round;
  ins.weights = m.tensors;
  ins.scaffold = m.options.count("scaffold") != 0;
  ins.local_bn = m.options.count("local_bn") != 0;
  ins.control = take_prefixed(ins.weights, kControlPrefix);
  FEDRA_REQUIRE(ins.scaffold || ins.control.empty(), "'{}' carries control variates without the option 'scaffold'",
                kFit);
  ins.local_epochs = o.get_int("local_epochs", 0);
  ins.local_steps = o.get_int("local_steps", 0);
  ins.batch_size = o.get_int("batch_size", 0);
  ins.optim = parse_options<OptimizerOptions>(OptionMap(kFit, [&] {
    std::map<std::string, std::string> sub;
    for (const auto& s : option_specs<OptimizerOptions>()) {
      FEDRA_REQUIRE(m.options.count(s.name), "'{}' lacks the option '{}'", kFit, s.name);
      sub[s.name] = m.options.at(s.name);
    }
    return sub;
  }()));
  ins.seed = static_cast<uint64_t>(o.get_int("seed", 0));
  ins.proximal_mu = o.get_double("proximal_mu", -1);
  FEDRA_REQUIRE(ins.proximal_mu >= 0, "'{}' asks for proximal_mu {}", kFit, ins.proximal_mu);
  if (m.options.count("dp.clip")) {
    m.require_options({"dp.noise_std", "dp.seed"});
    ins.dp_clip = o.get_double("dp.clip", 0);
    ins.dp_noise_std = o.get_double("dp.noise_std", -1);
    ins.dp_seed = static_cast<uint64_t>(o.get_int("dp.seed", 0));
    FEDRA_REQUIRE(ins.dp_clip > 0 && ins.dp_noise_std >= 0, "'{}' asks for dp.clip {} and dp.noise_std {}", kFit,
                  ins.dp_clip, ins.dp_noise_std);
  }
  ins.secagg = SecAggIns::decode(m);
  ins.sleep_factor = m.metric_or("fleet.sleep_factor", 0);
  ins.net_s = m.metric_or("fleet.net_s", 0);
  FEDRA_REQUIRE(ins.sleep_factor >= 0 && ins.net_s >= 0 && ins.net_s < 1e6, "'{}' asks to sleep {} x training + {} s",
                kFit, ins.sleep_factor, ins.net_s);
  if (m.options.count("testing.attack")) {
    ins.attack = o.get_enum<Attack>("testing.attack", Attack::kNone);
    ins.attack_scale = o.get_double("testing.attack_scale", 0);
  }
  FEDRA_REQUIRE(ins.local_epochs >= 0 && ins.local_steps >= 0 && ins.batch_size >= 1,
                "'{}' asks for local_epochs {}, local_steps {}, batch_size {}", kFit, ins.local_epochs,
                ins.local_steps, ins.batch_size);
  return ins;
}

Message FitRes::encode() const {
  Message m = encode_reply(kFitResult, round, *this, &FitRes::weights);
  append_prefixed(m.tensors, kDeltaControlPrefix, delta_control);
  return m;
}

FitRes FitRes::decode(Message&& m, uint32_t round, const std::string& worker) {
  m.expect_kind(kFitResult, worker);
  FEDRA_REQUIRE(m.round == round, "{} answered for round {} in round {}", worker, m.round, round);
  const double examples = m.metric_or("num_examples", 1);  // absent: refused by decode_reply below
  FEDRA_REQUIRE(examples > 0 && std::isfinite(examples), "rejected update from {}: num_examples is {}", worker,
                examples);
  FitRes r = decode_reply(std::move(m), kFitResult, worker, fmt::format("rejected update from {}: its", worker),
                          &FitRes::weights);
  r.round = round;
  r.delta_control = take_prefixed(r.weights, kDeltaControlPrefix);
  return r;
}

Message EvaluateRes::encode() const {
  Message m = encode_reply(kEvaluateResult, round, *this, &EvaluateRes::counts);
  for (const auto& [name, value] : extra) m.metrics["extra." + name] = value;
  return m;
}

EvaluateRes EvaluateRes::decode(Message&& m, uint32_t round, const std::string& worker) {
  m.expect_kind(kEvaluateResult, worker);
  FEDRA_REQUIRE(m.round == round, "{} evaluated for round {} in round {}", worker, m.round, round);
  const std::string whose = fmt::format("evaluation from {}: its", worker);
  std::map<std::string, double> extra;
  for (const auto& [key, value] : m.metrics) {
    if (key.rfind("extra.", 0) == 0) extra[key.substr(6)] = value;
  }
  EvaluateRes r = decode_reply(std::move(m), kEvaluateResult, worker, whose, &EvaluateRes::counts);
  r.round = round;
  r.extra = std::move(extra);
  FEDRA_REQUIRE(r.num_examples > 0, "evaluation from {}: num_examples is {}", worker, r.num_examples);
  FEDRA_REQUIRE(std::isfinite(r.loss), "evaluation from {}: the loss is {}", worker, r.loss);
  FEDRA_REQUIRE(r.correct >= 0 && r.correct <= r.num_examples, "evaluation from {}: {} correct of {} examples",
                worker, r.correct, r.num_examples);
  for (const auto& [name, value] : r.extra) {
    FEDRA_REQUIRE(std::isfinite(value), "evaluation from {}: its metric '{}' is {}", worker, name, value);
  }
  if (r.counts.empty()) return r;
  FEDRA_REQUIRE(r.counts.size() == 2 && r.counts[0].first == "class_examples" && r.counts[1].first == "class_correct",
                "evaluation from {}: expected the tensors class_examples and class_correct", worker);
  const at::Tensor& examples = r.counts[0].second;
  const at::Tensor& right = r.counts[1].second;
  FEDRA_REQUIRE(examples.scalar_type() == at::kLong && examples.dim() == 1 && right.sizes() == examples.sizes() &&
                    right.scalar_type() == at::kLong,
                "evaluation from {}: class counts are {} and {}, expected two int64 vectors of one length", worker,
                describe_tensor(examples), describe_tensor(right));
  FEDRA_REQUIRE(examples.sum().item<int64_t>() == r.num_examples && right.sum().item<int64_t>() == r.correct &&
                    (right <= examples).all().item<bool>() && (right >= 0).all().item<bool>(),
                "evaluation from {}: its class counts do not add up to {} examples, {} correct", worker,
                r.num_examples, r.correct);
  return r;
}

StrategyInfo fedavg_strategy() {
  return variant<FedAvgCoordinator>("fedavg",
                                    "Federated averaging: local epochs on each worker, example-weighted average");
}

}  // namespace fedra::fedavg
