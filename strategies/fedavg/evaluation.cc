// FedAvg's evaluation, both halves: the coordinator's test set, and federated evaluation on the
// workers' held-out data (fed_eval_every, fedavg.evaluate / fedavg.evaluate_result).
#include <algorithm>
#include <map>

#include <spdlog/spdlog.h>

#include <torch/torch.h>

#include "core/model/model.h"
#include "core/training/local_trainer.h"
#include "core/training/training.h"
#include "strategies/fedavg/fedavg.h"

namespace fedra::fedavg {

Metrics FedAvgCoordinator::evaluate(uint32_t, RunContext& ctx) {
  if (ctx.test_set == nullptr) return {};
  load_model_state(*model_, global_);
  const EvalStats s = evaluate_model(model_, *ctx.test_set, job_.loss);
  const auto scores = eval_metrics(s);
  return {scores.begin(), scores.end()};
}

Metrics FedAvgCoordinator::evaluate_federated(uint32_t round, uint32_t total, Cohort& cohort, RunContext& ctx) {
  const FedEvalOptions& o = options_.fed_eval();
  if (!o.due(round, round == total)) return {};
  // A draw of its own, different from the round's fit sample.
  const uint64_t seed = (ctx.job.seed ^ 0xE7A1ULL) * 0x9E3779B97F4A7C15ULL + round;
  Message ask(kEvaluate, round);
  ask.tensors = global_;  // shared, not copied
  std::vector<Instruction> instructions;
  for (WorkerId id : cohort.sample(o.fed_eval_fraction(), 1, seed)) instructions.push_back({id, ask});
  const size_t asked = instructions.size();
  struct Reply {
    std::string worker;
    EvaluateRes res;
  };
  std::vector<Reply> replies;
  std::vector<Failure> failures = cohort.request_all(
      std::move(instructions), Clock::now() + round_config().fit_timeout, [&](const WorkerInfo& w, Message&& m) {
        EvaluateRes r = EvaluateRes::decode(std::move(m), round, w.name);
        if (!replies.empty()) {
          const auto& first = replies.front().res;
          // A worker evaluating in its own code (Python) may send no class counts: then the round
          // has no per-class figures; counts that are sent must agree.
          FEDRA_REQUIRE(r.counts.empty() || first.counts.empty() ||
                            (r.counts.size() == first.counts.size() &&
                             r.counts[0].second.sizes() == first.counts[0].second.sizes()),
                        "evaluation from {}: its class counts do not match {}'s", w.name, replies.front().worker);
          FEDRA_REQUIRE(r.extra.size() == first.extra.size(), "evaluation from {}: its metrics differ from {}'s",
                        w.name, replies.front().worker);
        }
        replies.push_back({w.name, std::move(r)});
      });
  for (const auto& f : failures) {
    spdlog::warn("round {}: federated evaluation on {} failed ({}): {}", round, f.name, error_kind_name(f.kind),
                 f.message);
  }
  Metrics m = {{"fed_eval_workers_asked", static_cast<int64_t>(asked)},
               {"fed_eval_workers_ok", static_cast<int64_t>(replies.size())},
               {"fed_eval_workers_failed", static_cast<int64_t>(failures.size())}};
  if (replies.empty()) return m;
  std::sort(replies.begin(), replies.end(), [](const Reply& a, const Reply& b) { return a.worker < b.worker; });
  int64_t examples = 0, correct = 0;
  double loss = 0;
  std::map<std::string, double> extra;
  at::Tensor class_examples, class_correct;
  std::vector<double> weights;
  std::string workers;
  const bool every_count =
      std::all_of(replies.begin(), replies.end(), [](const Reply& r) { return !r.res.counts.empty(); });
  for (const Reply& r : replies) {
    examples += r.res.num_examples;
    correct += r.res.correct;
    const auto n = static_cast<double>(r.res.num_examples);
    loss += r.res.loss * n;
    for (const auto& [name, value] : r.res.extra) extra[name] += value * n;
    if (every_count) {
      class_examples = class_examples.defined() ? class_examples + r.res.counts[0].second : r.res.counts[0].second.clone();
      class_correct = class_correct.defined() ? class_correct + r.res.counts[1].second : r.res.counts[1].second.clone();
    }
    weights.push_back(n);
    workers += (workers.empty() ? "" : ",") + r.worker;
  }
  for (double& w : weights) w /= static_cast<double>(examples);
  m.emplace_back("fed_eval_loss", loss / static_cast<double>(examples));
  m.emplace_back("fed_eval_accuracy", static_cast<double>(correct) / static_cast<double>(examples));
  m.emplace_back("fed_eval_examples", examples);
  m.emplace_back("fed_eval_workers", workers);
  m.emplace_back("fed_eval_weights", weights);
  if (class_examples.defined()) {
    std::vector<double> counts, accuracy;
    for (int64_t c = 0; c < class_examples.size(0); ++c) {
      const auto n = class_examples[c].item<int64_t>();
      counts.push_back(static_cast<double>(n));
      accuracy.push_back(n > 0 ? static_cast<double>(class_correct[c].item<int64_t>()) / static_cast<double>(n) : 0.0);
    }
    m.emplace_back("fed_eval_class_examples", counts);
    m.emplace_back("fed_eval_class_accuracy", accuracy);
  }
  for (const auto& [name, sum] : extra) m.emplace_back("fed_eval_" + name, sum / static_cast<double>(examples));
  return m;
}

Message FedAvgWorker::evaluate(const Message& request, WorkerContext& ctx) {
  // Held-out data of Fedra's is evaluated here, whoever trains; a worker whose data is its own
  // (a Python worker) evaluates in its own code.
  const bool held_out = ctx.eval_data != nullptr && ctx.eval_data->size() > 0;
  FEDRA_REQUIRE(held_out || ctx.trainer != nullptr,
                "worker {} holds no data out for federated evaluation; start workers with --holdout F "
                "(e.g. 0.1) or set fedavg.fed_eval_every 0",
                ctx.name);
  load_model_state(*model_, request.tensors);
  const EvalStats s = held_out ? evaluate_model(model_, *ctx.eval_data, job_.loss)
                               : ctx.trainer->evaluate(LocalRequest{ctx.job, request.kind, request.round, ctx.data},
                                                       model_);
  EvaluateRes res;
  res.round = request.round;
  res.num_examples = s.examples;
  res.loss = s.loss;
  res.correct = s.correct;
  if (!s.class_examples.empty()) {
    res.counts.emplace_back("class_examples", at::tensor(s.class_examples, at::kLong));
    res.counts.emplace_back("class_correct", at::tensor(s.class_correct, at::kLong));
  }
  if (held_out) res.extra = evaluation_metrics(model_, *ctx.eval_data);
  return res.encode();
}

}  // namespace fedra::fedavg
