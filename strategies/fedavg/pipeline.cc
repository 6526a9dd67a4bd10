#include "strategies/fedavg/pipeline.h"

#include <spdlog/spdlog.h>

#include "strategies/fedavg/fedavg.h"
#include "strategies/fedavg/parts/parts.h"

namespace fedra::fedavg {

Pipeline::Pipeline(const FedAvgOptions& options)
    : stages_(builtin_stages(options)),
      rule_(options_rule(options)),
      rule_source_(options.robust().holds_updates() ? std::string("aggregate=") + enum_name(options.robust().aggregate())
                                                    : "aggregate=mean"),
      rule_is_default_(!options.robust().holds_updates()),
      server_(options_server_step(options)),
      server_opt_on_(options.server().server_opt() != ServerOpt::kNone) {}

void Pipeline::add_stage(std::unique_ptr<Stage> stage) {
  FEDRA_REQUIRE(!assembled_, "a stage is added before the pipeline is assembled (in the variant's constructor)");
  FEDRA_REQUIRE(stage != nullptr, "add_stage needs a stage");
  stages_.push_back(std::move(stage));
}

void Pipeline::set_rule(std::unique_ptr<Rule> rule) {
  FEDRA_REQUIRE(!assembled_, "the rule is set before the pipeline is assembled (in the variant's constructor)");
  FEDRA_REQUIRE(rule != nullptr, "set_rule needs a rule");
  // A variant's rule replaces the options' plain mean; beside a robust rule the options asked for,
  // one of the two would be ignored.
  FEDRA_REQUIRE(rule_is_default_, "this variant sets its own rule '{}', so {} would be ignored; leave aggregate=mean",
                rule->name(), rule_source_);
  rule_source_ = "the variant's rule '" + rule->name() + "'";
  rule_is_default_ = false;
  rule_ = std::move(rule);
}

void Pipeline::set_server_step(std::unique_ptr<ServerStep> step) {
  FEDRA_REQUIRE(!assembled_, "the server step is set before the pipeline is assembled (in the variant's constructor)");
  FEDRA_REQUIRE(step != nullptr, "set_server_step needs a step");
  server_ = std::move(step);
  server_is_default_ = false;
}

Stage* Pipeline::exchanger() const {
  for (const auto& s : stages_) {
    if (s->sight() == Sight::kSumOnly) return s.get();
  }
  return nullptr;
}

void Pipeline::assemble(const std::string& scope) {
  if (assembled_) return;
  FEDRA_REQUIRE(server_is_default_ || !server_opt_on_,
                "this variant steps the server itself ({}), so {}.server_opt would not run; leave server_opt at none",
                server_->name(), scope);
  // A stage that brings its own rule: beside any rule but the options' plain mean, one would be
  // ignored.
  Stage* owner = nullptr;
  for (const auto& s : stages_) {
    std::unique_ptr<Rule> own = s->own_rule();
    if (!own) continue;
    FEDRA_REQUIRE(owner == nullptr, "{}.{} and {}.{} each bring the round's rule; turn one of them off", scope,
                  owner != nullptr ? owner->name() : "", scope, s->name());
    FEDRA_REQUIRE(rule_is_default_, "{}.{} needs aggregate=mean: {}, not for {}", scope, s->name(), s->why_own_rule(),
                  rule_source_);
    owner = s.get();
    rule_ = std::move(own);
  }
  // Where the updates arrive as their sum only, whatever needs each one cannot run.
  if (const Stage* sum_only = exchanger()) {
    for (const auto& s : stages_) {
      const std::string why = s->needs_each_update();
      FEDRA_REQUIRE(why.empty(),
                    "{}.{} gives the coordinator only the sum of the updates, so {}.{} cannot run: {}; turn one of "
                    "them off",
                    scope, sum_only->name(), scope, s->name(), why);
    }
    FEDRA_REQUIRE(rule_->linear(),
                  "{}.{} gives the coordinator only the sum of the updates, and {} needs each update (it is not a "
                  "weighted sum); use aggregate=mean",
                  scope, sum_only->name(), rule_source_);
  }
  assembled_ = true;
}

void Pipeline::save(NamedTensors& state) const {
  for (auto& t : server_->state()) state.push_back(std::move(t));
  for (auto& t : rule_->state()) state.push_back(std::move(t));
  for (const auto& s : stages_) s->save(state);
}

void Pipeline::load(NamedTensors& state) {
  server_->load_state(state);
  rule_->load_state(state);
  for (const auto& s : stages_) s->load(state);
  // What is left beside the model is the state of parts this job does not use (a checkpoint
  // written with scaffold, resumed without): not this job's, so not loaded.
  NamedTensors model;
  std::vector<std::string> unused;
  for (auto& [name, t] : state) {
    if (name.find('/') != std::string::npos) {
      unused.push_back(name);
    } else {
      model.emplace_back(name, std::move(t));
    }
  }
  if (!unused.empty()) {
    spdlog::warn("the checkpoint holds state of parts this job does not use ({}{}): not loaded", unused.front(),
                 unused.size() > 1 ? fmt::format(" and {} more", unused.size() - 1) : "");
  }
  state = std::move(model);
}

}  // namespace fedra::fedavg
