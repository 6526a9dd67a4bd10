// psl's worker half: the sub-network over its towers, differentiated on its elements only.
#include <algorithm>
#include <chrono>
#include <map>
#include <optional>

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "core/data/batching.h"
#include "core/data/dataset.h"
#include "core/data/tensor_checks.h"
#include "core/loops/cohort.h"
#include "core/model/model.h"
#include "core/training/optimizer.h"
#include "core/training/training.h"
#include "strategies/psl/internal.h"

namespace fedra::psl {

namespace {


class PslWorker : public WorkerStrategy {
 public:
  PslWorker(const Job& job, PslOptions options) : job_(job), o_(std::move(options)) {
    FEDRA_REQUIRE(job.loss == "psl" || job.loss == "psl2", "the psl strategy needs --loss psl or psl2, got '{}'",
                  job.loss);
    classes_of(*build_model(job.model, job.seed));  // a clear error for a model without towers
  }

  Message handle(const Message& request, WorkerContext& ctx, WorkerLink&) override {
    const StepIns ins = StepIns::decode(request, o_.data() == PslData::kCoordinator);
    const Share share = parse_share(ins.towers, ins.pairs);
    if (share.towers != towers_) {  // the sub-network over these towers (weights come next)
      towers_ = share.towers;
      sub_ = build_model(fmt::format("psnet:classes={}", towers_.size()), job_.seed);
    }
    load_model_state(*sub_, ins.weights);
    at::Tensor x = ins.x, local = ins.y;
    int64_t batch = ins.batch;
    if (o_.data() == PslData::kWorker) {
      FEDRA_REQUIRE(ctx.data != nullptr && ctx.data->size() > 0, "worker {} has no training data", ctx.name);
      if (!batches_) batches_.emplace(enum_name(o_.schedule().batches()), o_.schedule().batch_size(), job_.seed, ctx.name);
      auto [bx, by] = batches_->batch(*ctx.data, static_cast<int64_t>(request.step));
      auto [rows, l] = select_rows(by, towers_);
      x = bx.index_select(0, rows);
      local = l;
      batch = bx.size(0);
    }
    for (auto& p : sub_->parameters()) p.mutable_grad() = at::Tensor();
    StepGrad reply;
    if (x.size(0) > 0) {
      at::Tensor loss = element_loss(sub_->forward(x), local, share, batch, job_.loss == "psl2");
      loss.backward();
      reply.loss = loss.item<double>();
    }
    for (const auto& p : sub_->named_parameters()) {
      const at::Tensor& g = p.value().grad();
      reply.grads.emplace_back(p.key(), g.defined() ? g : at::zeros_like(p.value()));
    }
    reply.examples = x.size(0);
    return reply.encode(ins.round, ins.step);
  }

 private:
  Job job_;
  PslOptions o_;
  std::vector<int64_t> towers_;
  torch::nn::Sequential sub_{nullptr};
  std::optional<BatchOrder> batches_;
};

}  // namespace

std::unique_ptr<WorkerStrategy> new_worker(const Job& job, const PslOptions& options) {
  return std::make_unique<PslWorker>(job, options);
}

}  // namespace fedra::psl
