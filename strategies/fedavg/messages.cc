// FedAvg's options, instruction and result: each field written and read in one place.
#include "strategies/fedavg/fedavg.h"

#include <cmath>
#include <string_view>

#include <torch/torch.h>

#include "strategies/run_message.h"

namespace fedra::fedavg {

namespace {

// The parts' tensors travel beside the model under "PART/NAME" (a model's own names never hold a
// '/': they are its modules' names joined by dots).
NamedTensors take_parts(NamedTensors& all) {
  NamedTensors parts, model;
  for (auto& [name, t] : all) (name.find('/') != std::string::npos ? parts : model).emplace_back(name, std::move(t));
  all = std::move(model);
  return parts;
}

}  // namespace

void FedAvgOptions::validate() const {
  FEDRA_REQUIRE(rounds_ >= 1, "fedavg.rounds must be >= 1, got {}", rounds_);
  FEDRA_REQUIRE(fraction_ > 0 && fraction_ <= 1, "fedavg.fraction must be in (0, 1], got {}", fraction_);
  FEDRA_REQUIRE(min_workers_ >= 1, "fedavg.min_workers must be >= 1, got {}", min_workers_);
  FEDRA_REQUIRE(min_results_ >= 1, "fedavg.min_results must be >= 1, got {}", min_results_);
  FEDRA_REQUIRE(exchange_only_ || local_epochs() >= 1 || local_steps() >= 1,
                "fedavg.local_epochs 0 and fedavg.local_steps 0 train nothing: give local_epochs >= 1 or "
                "local_steps >= 1 (or exchange_only true, to measure the exchange alone)");
  check_seconds(round_timeout_, "fedavg", "round_timeout");
  check_seconds(round_deadline_, "fedavg", "round_deadline", "none");
  FEDRA_REQUIRE(!scaffold_ || (optim().optimizer() == OptimizerKind::kSgd && optim().momentum() == 0),
                "fedavg.scaffold updates its control variates from the local steps' mean gradient "
                "(option II of Karimireddy et al. 2020), which holds for plain SGD only: set "
                "--fedavg.momentum 0 (and --fedavg.optimizer sgd)");
  // Whether the parts these options turn on compose: the same check a coordinator makes with a
  // variant's own parts.
  Pipeline(*this).assemble("fedavg");
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
  // applies it in simulated time (parts/fleet.cc).
  const double timeout = round_deadline_ > 0 && !fleet_.virtual_clock() ? std::min(round_deadline_, round_timeout_)
                                                                        : round_timeout_;
  c.fit_timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout * 1000));
  c.eval_every = eval_.eval_every();
  return c;
}

Message FitIns::encode() const {
  Message m(kFit, round);
  m.tensors = weights;
  for (const auto& [k, v] : options_to_map(train)) m.options[k] = v;
  m.options["seed"] = std::to_string(seed);
  return m;
}

FitIns FitIns::decode(const Message& m) {
  FEDRA_REQUIRE(m.kind == kFit, "a fedavg worker cannot handle '{}'", m.kind);
  m.require_options({"seed"});
  std::map<std::string, std::string> train;
  for (const auto& s : option_specs<LocalTrainingOptions>()) {
    FEDRA_REQUIRE(m.options.count(s.name), "'{}' lacks the option '{}'", kFit, s.name);
    train[s.name] = m.options.at(s.name);
  }
  FitIns ins;
  ins.round = m.round;
  ins.weights = m.tensors;
  take_parts(ins.weights);
  try {
    ins.train = parse_options<LocalTrainingOptions>(OptionMap(kFit, train));
  } catch (const Error& e) {
    FEDRA_FAIL("'{}' asks for local training that cannot run: {}", kFit, e.what());
  }
  ins.seed = static_cast<uint64_t>(OptionMap(kFit, m.options).get_int("seed", 0));
  return ins;
}

Message FitRes::encode() const {
  Message m = encode_reply(kFitResult, round, *this, &FitRes::weights);
  for (const auto& [name, t] : side) m.tensors.emplace_back(name, t);
  for (const auto& [name, value] : extra) m.metrics[name] = value;
  return m;
}

FitRes FitRes::decode(Message&& m, uint32_t round, const std::string& worker) {
  m.expect_kind(kFitResult, worker);
  FEDRA_REQUIRE(m.round == round, "{} answered for round {} in round {}", worker, m.round, round);
  const double examples = m.metric_or("num_examples", 1);  // absent: refused by decode_reply below
  FEDRA_REQUIRE(examples > 0 && std::isfinite(examples), "rejected update from {}: num_examples is {}", worker,
                examples);
  std::map<std::string, double> metrics = m.metrics;
  FitRes r = decode_reply(std::move(m), kFitResult, worker, fmt::format("rejected update from {}: its", worker),
                          &FitRes::weights);
  r.round = round;
  r.side = take_parts(r.weights);
  for (const char* declared : {"num_examples", "train_loss", "steps", "load_s", "train_s", "fit_s"}) {
    metrics.erase(declared);
  }
  r.extra = std::move(metrics);
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

}  // namespace fedra::fedavg
