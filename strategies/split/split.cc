// Split learning's options and the helpers its halves share.
#include "strategies/split/internal.h"

#include <map>

#include "core/model/model.h"
#include "strategies/run_message.h"

namespace fedra::split {

NamedTensors state_for(const NamedTensors& state, const torch::nn::Module& module) {
  std::map<std::string, const at::Tensor*> by_name;
  for (const auto& [n, t] : state) by_name[n] = &t;
  NamedTensors out;
  for (const auto& [n, t] : model_state(module)) {
    const auto it = by_name.find(n);
    FEDRA_REQUIRE(it != by_name.end(), "client-side weights lack '{}'", n);
    out.emplace_back(n, *it->second);
  }
  return out;
}

NamedTensors clone_state(const NamedTensors& state) {
  NamedTensors out;
  for (const auto& [n, t] : state) out.emplace_back(n, t.clone());
  return out;
}

double tensor_bytes(const at::Tensor& t) { return static_cast<double>(t.numel() * t.element_size()); }

void SplitOptions::validate() const {
  FEDRA_REQUIRE(epochs_ >= 1, "split.epochs must be >= 1, got {}", epochs_);
  FEDRA_REQUIRE(max_steps_ >= 0, "split.max_steps must be >= 0, got {}", max_steps_);
  FEDRA_REQUIRE(batch_size_ >= 1, "split.batch_size must be >= 1, got {}", batch_size_);
  FEDRA_REQUIRE(pipeline_ >= 1, "split.pipeline must be >= 1 (micro-batches in flight), got {}", pipeline_);
  check_seconds(step_timeout_, "split", "step_timeout");
  FEDRA_REQUIRE(!exchange_only_ || labels_ == Labels::kCoordinator, "split.exchange_only needs labels=coordinator");
}

void SplitTesting::validate(const std::string& scope) const {
  FEDRA_REQUIRE(inject_exit_ >= -1, "{}.testing.inject_exit must be a step or -1, got {}", scope, inject_exit_);
  FEDRA_REQUIRE(inject_bad_shape_ >= -1, "{}.testing.inject_bad_shape must be a step or -1, got {}", scope,
                inject_bad_shape_);
}

Message TurnIns::encode() const {
  Message m(kRun, round);
  m.step = static_cast<uint64_t>(first);
  m.tensors = weights;
  m.options["steps"] = std::to_string(steps);
  m.options["last"] = last ? "1" : "0";
  if (set_opt_state) {
    m.options["opt_state"] = "1";
    append_prefixed(m.tensors, "opt/", opt_state);
  }
  if (want_state) m.options["want_state"] = "1";
  return m;
}

TurnIns TurnIns::decode(const Message& m) {
  FEDRA_REQUIRE(m.kind == kRun, "a split worker cannot handle '{}'", m.kind);
  m.require_options({"steps", "last"});
  const OptionMap o(kRun, m.options);
  TurnIns t;
  t.round = m.round;
  t.first = static_cast<int64_t>(m.step);
  t.steps = o.get_int("steps", 0);
  t.last = o.get_int("last", 0) == 1;
  t.weights = m.tensors;
  t.opt_state = take_prefixed(t.weights, "opt/");
  t.set_opt_state = o.get_int("opt_state", 0) == 1;
  t.want_state = o.get_int("want_state", 0) == 1;
  FEDRA_REQUIRE(t.set_opt_state || t.opt_state.empty(), "'{}' carries optimiser state without opt_state=1", kRun);
  FEDRA_REQUIRE(t.steps >= 0, "'{}' asks for {} steps", kRun, t.steps);
  return t;
}

Message TurnDone::encode(uint32_t round) const {
  Message m = encode_reply(kDone, round, *this, &TurnDone::weights);
  append_prefixed(m.tensors, "opt/", opt_state);
  return m;
}

TurnDone TurnDone::decode(Message&& m, const std::string& worker) {
  TurnDone d = decode_reply(std::move(m), kDone, worker, worker + "'s", &TurnDone::weights);
  d.opt_state = take_prefixed(d.weights, "opt/");
  return d;
}

namespace {
// The tensor each kind carries at the cut.
const char* cut_tensor(const std::string& kind) {
  return kind == kAct ? "act" : kind == kOut ? "out" : "grad";
}
}  // namespace

Message CutMessage::encode(const char* kind) const {
  Message m(kind);
  m.step = step;
  m.tensors.emplace_back(cut_tensor(kind), tensor);
  if (labels.defined()) m.tensors.emplace_back("labels", labels);
  if (std::string(kind) == kOutGrad) {
    m.metrics["loss"] = loss;
    m.metrics["examples"] = examples;
    if (correct) m.metrics["correct"] = *correct;
  }
  return m;
}

CutMessage CutMessage::decode(Message&& m, const char* kind, const std::string& who) {
  m.expect_kind(kind, who);
  CutMessage c;
  c.step = m.step;
  c.tensor = m.tensor(cut_tensor(kind));
  for (const auto& [name, t] : m.tensors) {
    if (name == "labels") c.labels = t;
  }
  if (std::string(kind) == kOutGrad) {
    c.loss = m.metric("loss");
    c.examples = m.metric("examples");
    if (m.metrics.count("correct") != 0) c.correct = m.metric("correct");
  }
  return c;
}

StrategyInfo split_strategy() {
  return make_strategy<SplitOptions>(
      "split", "Split learning: bottom and raw data on the worker, top on the coordinator, backprop across the cut",
      &new_coordinator, &new_worker);
}

}  // namespace fedra::split
