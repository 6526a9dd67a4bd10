// tensor's coordinator half.
#include "strategies/tensor/internal.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <deque>
#include <map>
#include <optional>

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

namespace fedra::tensor {

namespace {

class TensorCoordinator : public ModelParallelCoordinator {
 public:
  TensorCoordinator(const Job& job, const TensorOptions& o)
      : ModelParallelCoordinator(job, plan(o), o.eval()), o_(o) {}

 private:
  static RoundPlan plan(const TensorOptions& o) {
    RoundPlan p("tensor", "rank", static_cast<size_t>(o.workers()), o.schedule(), o.init());
    if (o.topology() != Topology::kAuto) p.direct = o.topology() == Topology::kRing;
    return p;  // direct links: a ring
  }

  void partition() override { shards_ = plan_shards(model_, o_.workers()); }

  std::string describe(const StepPlan& p) const override {
    return fmt::format("tensor: {} layers split {} ways; {} steps in {} rounds of up to {}", shards_.layers.size(),
                       shards_.world, p.total, p.rounds(), p.per_round);
  }

  struct Collective {
    std::string kind;
    std::vector<at::Tensor> parts;
    size_t count = 0;
  };

  Metrics run_parts(Cohort& cohort, const RunContext& ctx, const RoundSteps& steps,
                    const std::vector<WorkerInfo>& ranked) override {
    const uint32_t round = steps.round;
    const int64_t first = steps.first, count = steps.count;
    const size_t world = ranked.size();
    const NamedTensors full = model_state(*model_);
    std::vector<NamedTensors> expected(world);
    std::vector<Instruction> instructions;
    for (size_t r = 0; r < world; ++r) {
      expected[r] = shard_of(shards_, full, static_cast<int64_t>(r));
      const RunIns run{round, first, count, static_cast<int64_t>(r), static_cast<int64_t>(world), expected[r], opt_state_[r]};
      instructions.push_back({ranked[r].id, run.encode(kRun)});
    }

    std::map<std::pair<int64_t, int64_t>, Collective> pending;
    const int64_t end = first + count;
    auto on_part = [&](size_t r, const WorkerInfo& w, Message&& m) {
      const auto step = static_cast<int64_t>(m.step);
      FEDRA_REQUIRE(step >= first && step < end, "{} sent '{}' for step {}, outside this round's steps {}..{}",
                    w.name, m.kind, step, first, end - 1);
      if (m.kind == kBatch) {
        FEDRA_REQUIRE(r == 0, "{} (rank {}) sent a batch; only rank 0 draws batches", w.name, r);
        TensorBatch::decode(m, w.name);  // checked before it is relayed as it came
        check_finite(m.tensors);
        for (size_t k = 1; k < world; ++k) cohort.post(ranked[k].id, m);
        return;
      }
      FEDRA_REQUIRE(m.kind == kReduce || m.kind == kGather, "unexpected '{}' from {} during a tensor round",
                    m.kind, w.name);
      const CollectivePart part = CollectivePart::decode(m);
      const int64_t op = part.op;
      const at::Tensor& t = part.t;
      FEDRA_REQUIRE(t.dim() == 2 && t.scalar_type() == at::kFloat, "{} sent {} for step {} op {}; expected a "
                    "float32 [batch, features] tensor", w.name, describe_tensor(t), step, op);
      check_finite(m.tensors);
      Collective& c = pending[{step, op}];
      if (c.count == 0) {
        c.kind = m.kind;
        c.parts.assign(world, at::Tensor());
      }
      FEDRA_REQUIRE(c.kind == m.kind, "{} sent '{}' for step {} op {}, the others '{}'", w.name, m.kind, step, op, c.kind);
      FEDRA_REQUIRE(!c.parts[r].defined(), "{} sent step {} op {} twice", w.name, step, op);
      for (const auto& other : c.parts) {
        if (!other.defined()) continue;
        const bool fits = m.kind == kReduce ? other.sizes() == t.sizes() : other.size(0) == t.size(0);
        FEDRA_REQUIRE(fits, "{} sent {} for step {} op {}, which does not fit {} from another worker", w.name,
                      describe_tensor(t), step, op, describe_tensor(other));
      }
      c.parts[r] = t;
      if (++c.count < world) return;
      at::Tensor result;
      if (c.kind == kReduce) {  // in rank order: every worker gets the same bits
        result = c.parts[0].clone();
        for (size_t k = 1; k < world; ++k) result.add_(c.parts[k]);
      } else {
        result = at::cat(c.parts, 1);
      }
      const Message res = CollectivePart{m.step, op, -1, result}.encode(kResult);
      for (size_t k = 0; k < world; ++k) cohort.post(ranked[k].id, res);
      pending.erase({step, op});
    };
    const bool linked = direct(ranked);
    const std::vector<Message> done =
        exchange(cohort, round, ranked, std::move(instructions), kDone, on_part,
                 "every worker holds a slice of every layer, so the round cannot go on without it", linked);

    // Every rank's slices are checked before any state changes: a bad one leaves the last round's.
    std::vector<NamedTensors> shards(world), opt_state(world);
    for (size_t r = 0; r < world; ++r) {
      auto [params, opt] = split_reply(done[r]);
      try {
        check_layout(expected[r], params);
        check_finite(params);
      } catch (const Error& e) {
        FEDRA_FAIL("tensor round {}: the slices returned by {} are not usable: {}", round, ranked[r].name, e.what());
      }
      shards[r] = std::move(params);
      opt_state[r] = std::move(opt);
    }
    load_model_state(*model_, assemble(shards_, shards));
    opt_state_ = std::move(opt_state);
    Metrics line = loss_metrics(ctx, steps, done[0], ranked[0].name);
    line.emplace_back("worker_compute_ms", done[0].metric_or("compute_ms", 0));
    line.emplace_back("worker_wait_ms", done[0].metric_or("wait_ms", 0));
    add_link_metrics(line, done, linked);
    return line;
  }

  TensorOptions o_;
  ShardPlan shards_;
};

}  // namespace

std::unique_ptr<CoordinatorStrategy> new_coordinator(const Job& job, const TensorOptions& options) {
  return std::make_unique<TensorCoordinator>(job, options);
}

}  // namespace fedra::tensor
