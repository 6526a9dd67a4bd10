#include "strategies/run_message.h"

#include <algorithm>

namespace fedra {

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
  NamedTensors params, opt;
  for (const auto& [name, t] : tensors) {
    if (name.rfind("opt/", 0) == 0) opt.emplace_back(name.substr(4), t);
    else if (std::find(skip.begin(), skip.end(), name) == skip.end()) params.emplace_back(name, t);
  }
  return {params, opt};
}

void append_params_and_opt_state(NamedTensors& out, const NamedTensors& params, const NamedTensors& opt_state) {
  for (const auto& p : params) out.push_back(p);
  for (const auto& [name, t] : opt_state) out.emplace_back("opt/" + name, t);
}

}  // namespace fedra
