// FedAvg's options, instruction and result: each field written and read in one place.
#include "strategies/fedavg/fedavg.h"

#include <cmath>

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
  c.fit_timeout = std::chrono::milliseconds(static_cast<int64_t>(round_timeout_ * 1000));
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
  if (attack != Attack::kNone) {
    m.options["testing.attack"] = enum_name(attack);
    m.options["testing.attack_scale"] = fmt::format("{:.17g}", attack_scale);
  }
  return m;
}

FitIns FitIns::decode(const Message& m) {
  FEDRA_REQUIRE(m.kind == kFit, "a fedavg worker cannot handle '{}'", m.kind);
  m.require_options({"local_epochs", "local_steps", "batch_size", "seed", "proximal_mu"});
  const OptionMap o(kFit, m.options);
  FitIns ins;
  ins.round = m.round;
  ins.weights = m.tensors;
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
  if (m.options.count("testing.attack")) {
    ins.attack = o.get_enum<Attack>("testing.attack", Attack::kNone);
    ins.attack_scale = o.get_double("testing.attack_scale", 0);
  }
  FEDRA_REQUIRE(ins.local_epochs >= 0 && ins.local_steps >= 0 && ins.batch_size >= 1,
                "'{}' asks for local_epochs {}, local_steps {}, batch_size {}", kFit, ins.local_epochs,
                ins.local_steps, ins.batch_size);
  return ins;
}

Message FitRes::encode() const { return encode_reply(kFitResult, round, *this, &FitRes::weights); }

FitRes FitRes::decode(Message&& m, uint32_t round, const std::string& worker) {
  m.expect_kind(kFitResult, worker);
  FEDRA_REQUIRE(m.round == round, "{} answered for round {} in round {}", worker, m.round, round);
  const double examples = m.metric_or("num_examples", 1);  // absent: refused by decode_reply below
  FEDRA_REQUIRE(examples > 0 && std::isfinite(examples), "rejected update from {}: num_examples is {}", worker,
                examples);
  FitRes r = decode_reply(std::move(m), kFitResult, worker, fmt::format("rejected update from {}: its", worker),
                          &FitRes::weights);
  r.round = round;
  return r;
}

StrategyInfo fedavg_strategy() {
  return variant<FedAvgCoordinator>("fedavg",
                                    "Federated averaging: local epochs on each worker, example-weighted average");
}

}  // namespace fedra::fedavg
