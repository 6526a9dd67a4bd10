#include "strategies/run_message.h"

#include <algorithm>

#include "core/kit/strategy.h"

namespace fedra {

void Heartbeat::start(std::chrono::milliseconds step_timeout) {
  every_ = std::min<std::chrono::steady_clock::duration>(std::chrono::seconds(1), step_timeout / 4);
  last_ = std::chrono::steady_clock::now();
}

void Heartbeat::after_step(WorkerLink& link, int64_t step, bool sent_other) {
  if (sent_other || std::chrono::steady_clock::now() - last_ < every_) return;
  Message beat(kind_);
  beat.step = static_cast<uint64_t>(step);
  link.send(beat);
  last_ = std::chrono::steady_clock::now();
}

Message RunIns::encode(const std::string& kind) const {
  Message m(kind, round);
  m.step = static_cast<uint64_t>(first);
  append_params_and_opt_state(m.tensors, params, opt_state);
  m.options["steps"] = std::to_string(steps);
  m.options["rank"] = std::to_string(rank);
  m.options["world"] = std::to_string(world);
  return m;
}

RunIns RunIns::decode(const Message& m, const std::string& kind) {
  FEDRA_REQUIRE(m.kind == kind, "a {} worker cannot handle '{}'", kind.substr(0, kind.find('.')), m.kind);
  m.require_options({"steps", "rank", "world"});
  const OptionMap o(kind, m.options);
  RunIns r;
  r.round = m.round;
  r.first = static_cast<int64_t>(m.step);
  r.steps = o.get_int("steps", 0);
  r.rank = o.get_int("rank", 0);
  r.world = o.get_int("world", 0);
  FEDRA_REQUIRE(r.steps >= 1 && r.world >= 1 && r.rank >= 0 && r.rank < r.world,
                "'{}' asks for {} steps as rank {} of {}", kind, r.steps, r.rank, r.world);
  std::tie(r.params, r.opt_state) = params_and_opt_state(m.tensors);
  return r;
}

std::pair<NamedTensors, NamedTensors> params_and_opt_state(const NamedTensors& tensors,
                                                           const std::vector<std::string>& skip) {
  NamedTensors params = tensors;
  NamedTensors opt = take_prefixed(params, "opt/");
  params.erase(std::remove_if(params.begin(), params.end(),
                              [&](const auto& p) { return std::find(skip.begin(), skip.end(), p.first) != skip.end(); }),
               params.end());
  return {params, opt};
}

void append_params_and_opt_state(NamedTensors& out, const NamedTensors& params, const NamedTensors& opt_state) {
  for (const auto& p : params) out.push_back(p);
  append_prefixed(out, "opt/", opt_state);
}

}  // namespace fedra
