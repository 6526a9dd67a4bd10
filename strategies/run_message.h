// RunIns: the start of one worker's round of steps, typed, for the step-driven strategies whose
// workers each hold a place in the job (gradsum's replicas, tensor's ranks, pipeline's stages).
//
// On the wire it is the strategy's "NAME.run" message: `step` = the round's first step; options
// `steps`, `rank`, `world`; tensors: the worker's parameters by name, then its optimiser's state
// as "opt/NAME..." (docs/protocol.md). encode() and decode() are the only places that know this,
// and decode() refuses a message that lacks a field or whose fields do not fit together, naming
// what is wrong.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/kit/message.h"
#include "core/kit/options.h"

namespace fedra {

struct RunIns {
  uint32_t round = 0;
  int64_t first = 0;  // the round's first step
  int64_t steps = 0;  // steps in the round
  int64_t rank = 0;   // this worker's place: replica, rank or stage
  int64_t world = 1;  // workers taking part
  NamedTensors params;     // the worker's parameters (its part of the model, or all of it)
  NamedTensors opt_state;  // its optimiser's state (empty when the coordinator keeps it)

  Message encode(const std::string& kind) const;
  static RunIns decode(const Message& m, const std::string& kind);
};

class WorkerLink;

// A worker's heartbeat to the coordinator while it works with its peers (the coordinator's
// deadline backstop): "STRATEGY.progress" with the step, at most once a period, min(1 s, a quarter
// of the step timeout).
class Heartbeat {
 public:
  explicit Heartbeat(std::string kind) : kind_(std::move(kind)) {}
  // A period from now.
  void start(std::chrono::milliseconds step_timeout);
  // After step `step`: sends a heartbeat if none went for a period, unless `sent_other` (another
  // message to the coordinator went after this step).
  void after_step(WorkerLink& link, int64_t step, bool sent_other = false);

 private:
  std::string kind_;
  std::chrono::steady_clock::duration every_{};
  std::chrono::steady_clock::time_point last_{};
};

// A reply's tensors: the part's parameters, and its optimiser state ("opt/" names, the prefix
// removed); the tensors named in `skip` (per-step losses and the like) are left out of both.
std::pair<NamedTensors, NamedTensors> params_and_opt_state(const NamedTensors& tensors,
                                                           const std::vector<std::string>& skip = {});
// The reverse: `params`, then `opt_state` under "opt/" names, appended to `out`.
void append_params_and_opt_state(NamedTensors& out, const NamedTensors& params, const NamedTensors& opt_state);

}  // namespace fedra
