// The parts of one FedAvg job on the coordinator, and whether they compose.
//
// A Pipeline holds the stages the options turn on (strategies/fedavg/parts/: in the order fleet,
// clip_norm, scaffold, dp, attacks, secagg), the round's rule and the server's step, plus what a
// variant adds or replaces. assemble() decides the rule and refuses, naming both sides, what
// cannot run together:
//   - a stage that brings its own rule (DP's noised mean) beside a rule set otherwise (aggregate=
//     median, a plugin's rule);
//   - a stage or rule that needs each update where the updates arrive as their sum only (secure
//     aggregation): clip_norm, dp=server, dp_adaptive, scaffold, fleets, robust rules, a plugin's
//     non-linear rule;
//   - a variant's server step beside server_opt (which it would leave unused).
// FedAvgOptions::validate() runs the same checks on the parts its options turn on, so a
// command line that cannot work is refused before anything starts.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "strategies/fedavg/part.h"

namespace fedra::fedavg {

struct FedAvgOptions;

class Pipeline {
 public:
  // The parts `options` turn on.
  explicit Pipeline(const FedAvgOptions& options);

  void add_stage(std::unique_ptr<Stage> stage);
  void set_rule(std::unique_ptr<Rule> rule);
  void set_server_step(std::unique_ptr<ServerStep> step);

  // Checks that the parts compose and fixes the rule; throws Error naming both sides of a
  // conflict, prefixed with `scope` (the strategy's name: "fedavg.dp needs ..."). Idempotent.
  void assemble(const std::string& scope);
  bool assembled() const { return assembled_; }

  const std::vector<std::unique_ptr<Stage>>& stages() const { return stages_; }
  Rule& rule() { return *rule_; }
  ServerStep& server_step() { return *server_; }
  // The stage that runs the round's exchange itself (secure aggregation), or null.
  Stage* exchanger() const;

  // Checkpoints: every part's state (the server step's, the rule's, each stage's), and back.
  void save(NamedTensors& state) const;
  void load(NamedTensors& state);

 private:
  std::vector<std::unique_ptr<Stage>> stages_;
  std::unique_ptr<Rule> rule_;        // the options' rule, or the variant's
  std::string rule_source_;           // what chose it, for refusals: "aggregate=median", "the variant"
  bool rule_is_default_ = true;       // the options' plain weighted mean, which a stage may replace
  std::unique_ptr<ServerStep> server_;
  bool server_is_default_ = true;     // the options' server optimiser
  bool server_opt_on_ = false;        // server_opt is not none
  bool assembled_ = false;
};

}  // namespace fedra::fedavg
