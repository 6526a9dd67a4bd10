// pipeline's coordinator half.
#include "strategies/pipeline/internal.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <deque>
#include <map>
#include <optional>

#include <fmt/ranges.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "core/data/batching.h"
#include "core/data/tensor_checks.h"
#include "core/loops/cohort.h"
#include "core/model/model.h"
#include "core/training/optimizer.h"
#include "core/training/training.h"
#include "strategies/model_parallel.h"
#include "strategies/run_message.h"

namespace fedra::pipeline {

namespace {

class PipelineCoordinator : public ModelParallelCoordinator {
 public:
  PipelineCoordinator(const Job& job, const PipelineOptions& o)
      : ModelParallelCoordinator(job, plan(o), o.eval()), o_(o) {}

 private:
  static RoundPlan plan(const PipelineOptions& o) {
    RoundPlan p("pipeline", "stage", static_cast<size_t>(o.stages()), o.schedule(), o.init());
    p.script_children = true;
    if (o.topology() != Topology::kAuto) p.direct = o.topology() == Topology::kChain;
    p.links = "chain";
    return p;
  }

  void partition() override { stages_ = cut_stages(model_, o_.stages(), o_.cuts()); }

  std::string describe(const StepPlan& p) const override {
    return fmt::format("pipeline: {} stages {}; {} micro-batches of {} in flight, weight stashing {}; {} micro-batches "
                       "in {} rounds of up to {}", stages_.size(), describe_stages(stages_), o_.effective_in_flight(),
                       o_.schedule().batch_size(), o_.stash() ? "on" : "off", p.total, p.rounds(), p.per_round);
  }

  Metrics run_parts(Cohort& cohort, const RunContext& ctx, const RoundSteps& steps,
                    const std::vector<WorkerInfo>& ranked) override {
    const uint32_t round = steps.round;
    const int64_t first = steps.first, count = steps.count;
    const size_t n = ranked.size();
    std::vector<NamedTensors> expected(n);
    std::vector<Instruction> instructions;
    for (size_t s = 0; s < n; ++s) {
      expected[s] = parameters_of(stages_[s]);
      const RunIns run{round, first, count, static_cast<int64_t>(s), static_cast<int64_t>(n), expected[s], opt_state_[s]};
      instructions.push_back({ranked[s].id, run.encode(kRun)});
    }

    // The activation shape (past the batch dimension) crossing each cut, from its first message.
    std::vector<std::vector<int64_t>> cut_shape(n);
    auto check_cut = [&](size_t cut, const at::Tensor& t, const WorkerInfo& w, const char* what, int64_t step) {
      FEDRA_REQUIRE(t.dim() >= 1 && t.scalar_type() == at::kFloat, "{} sent {} {} for micro-batch {}", w.name, what,
                    describe_tensor(t), step);
      const std::vector<int64_t> shape(t.sizes().begin() + 1, t.sizes().end());
      if (cut_shape[cut].empty()) cut_shape[cut] = shape;
      FEDRA_REQUIRE(shape == cut_shape[cut], "{} sent {} {} for micro-batch {}; the cut after stage {} carries "
                    "[batch, {}]", w.name, what, describe_tensor(t), step, cut, fmt::join(cut_shape[cut], ", "));
    };
    const int64_t end = first + count;
    int64_t relayed = 0;
    auto on_part = [&](size_t s, const WorkerInfo& w, Message&& m) {
      const auto step = static_cast<int64_t>(m.step);
      FEDRA_REQUIRE(step >= first && step < end, "{} (stage {}) sent '{}' for micro-batch {}, outside this round's "
                    "{}..{}", w.name, s, m.kind, step, first, end - 1);
      if (m.kind == kAct) {
        FEDRA_REQUIRE(s + 1 < n, "{} is the last stage and sent activations", w.name);
        const StageTensor in = StageTensor::decode(m, kAct);
        const at::Tensor& act = in.t;
        const at::Tensor& target = in.target;
        check_cut(s, act, w, "activations", step);
        FEDRA_REQUIRE(target.dim() >= 1 && target.size(0) == act.size(0), "{} sent {} activations with {} targets",
                      w.name, describe_tensor(act), describe_tensor(target));
        check_finite(m.tensors);
        cohort.post(ranked[s + 1].id, m);
      } else {
        FEDRA_REQUIRE(m.kind == kGrad, "unexpected '{}' from {} during a pipeline round", m.kind, w.name);
        FEDRA_REQUIRE(s > 0, "{} is stage 0 and sent a gradient", w.name);
        const at::Tensor g = StageTensor::decode(m, kGrad).t;
        check_cut(s - 1, g, w, "gradient", step);
        check_finite(m.tensors);
        cohort.post(ranked[s - 1].id, m);
      }
      ++relayed;
    };
    const bool linked = direct(ranked);
    const std::vector<Message> done =
        exchange(cohort, round, ranked, std::move(instructions), kDone, on_part,
                 "a stage's weights live on its worker only, so the round cannot go on without it", linked);

    // Every stage's parameters are checked before any is loaded: the model stays the last
    // round's whole if one is unusable.
    std::vector<std::pair<NamedTensors, NamedTensors>> parts;
    for (size_t s = 0; s < n; ++s) {
      parts.push_back(split_reply(done[s]));
      try {
        check_layout(expected[s], parts.back().first);
        check_finite(parts.back().first);
      } catch (const Error& e) {
        FEDRA_FAIL("pipeline round {}: the parameters returned by {} (stage {}) are not usable: {}", round,
                   ranked[s].name, s, e.what());
      }
    }
    std::vector<std::string> busy;
    for (size_t s = 0; s < n; ++s) {
      load_model_state(*stages_[s], parts[s].first);
      opt_state_[s] = std::move(parts[s].second);
      const double compute = done[s].metric_or("compute_s", 0), wait = done[s].metric_or("wait_s", 0);
      busy.push_back(fmt::format("{:.2f}", compute + wait > 0 ? compute / (compute + wait) : 0.0));
    }
    Metrics line = loss_metrics(ctx, steps, done[n - 1], ranked[n - 1].name);
    line.emplace_back("in_flight", o_.effective_in_flight());
    line.emplace_back("messages_relayed", relayed);
    line.emplace_back("stage_busy", fmt::format("{}", fmt::join(busy, ",")));
    add_link_metrics(line, done, linked);
    return line;
  }

  PipelineOptions o_;
  std::vector<torch::nn::Sequential> stages_;
};

}  // namespace

std::unique_ptr<CoordinatorStrategy> new_coordinator(const Job& job, const PipelineOptions& options) {
  return std::make_unique<PipelineCoordinator>(job, options);
}

}  // namespace fedra::pipeline
