#include "core/training/local_trainer.h"

#include "core/kit/error.h"

namespace fedra {

EvalStats LocalTrainer::evaluate(const LocalRequest& request, torch::nn::Sequential& model) {
  (void)model;
  FEDRA_FAIL("'{}': this worker's training loop does not evaluate, and it holds no data out for Fedra to "
             "evaluate on; start it with --holdout F (e.g. 0.1) or set fedavg.fed_eval_every 0", request.kind);
}

LocalOutcome train_on_worker(WorkerContext& ctx, const std::string& kind, uint32_t round,
                             torch::nn::Sequential& model, const TrainOptions& options) {
  if (ctx.trainer != nullptr) {
    LocalOutcome out = ctx.trainer->train(LocalRequest{ctx.job, kind, round, ctx.data}, model, options);
    FEDRA_REQUIRE(out.num_examples > 0, "worker {}: its training loop reported num_examples {}; it must be > 0",
                  ctx.name, out.num_examples);
    return out;
  }
  FEDRA_REQUIRE(ctx.data != nullptr && ctx.data->size() > 0, "worker {} has no training data", ctx.name);
  LocalOutcome out;
  out.stats = train_local(model, *ctx.data, options);
  out.num_examples = ctx.data->size();
  return out;
}

}  // namespace fedra
