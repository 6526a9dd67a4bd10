// Secure aggregation as a part of FedAvg (strategies/fedavg/secagg.h runs the protocol): the
// round's exchange becomes the protocol's, the coordinator learns only the weighted sum of the
// updates, and the round's rule takes that sum. Only a linear rule can (the weighted mean, DP's
// mean with dp=client); every stage that needs each update is refused when the pipeline is
// assembled.
#include <algorithm>
#include <chrono>
#include <map>

#include "strategies/fedavg/fedavg.h"
#include "strategies/fedavg/parts/parts.h"

namespace fedra::fedavg {

namespace {

class SecAggStage : public Stage {
 public:
  SecAggStage(SecAggOptions o, FedAvgTesting testing) : o_(std::move(o)), testing_(std::move(testing)) {}
  std::string name() const override { return "secagg"; }
  Sight sight() const override { return Sight::kSumOnly; }
  void start(const Job& job, const NamedTensors&, const torch::nn::Sequential&) override { seed_ = job.seed; }

  std::optional<std::vector<Failure>> exchange(Round& round, Cohort& cohort, std::vector<Instruction>& instructions,
                                               Deadline deadline, Rule& rule, Taken& taken) override {
    std::map<WorkerId, WorkerInfo> connected;
    for (WorkerInfo& w : cohort.workers()) connected.emplace(w.id, std::move(w));
    std::map<WorkerId, std::pair<std::string, double>> asked;
    for (const Instruction& ins : instructions) {
      const auto it = connected.find(ins.worker);
      if (it != connected.end()) asked[ins.worker] = {it->second.name, rule.weight(it->second)};
    }
    result_.emplace();
    try {
      const uint64_t graph_seed = (seed_ ^ 0x5ECA66ULL) * 0x9E3779B97F4A7C15ULL + round.number;
      SecAggRound protocol(round.number, o_, *round.global, std::move(asked), graph_seed);
      const double training_s = std::max(1.0, std::chrono::duration<double>(deadline - Clock::now()).count());
      for (Instruction& ins : instructions) {
        SecAggIns s = protocol.instruction(ins.worker, training_s);
        const auto it = connected.find(ins.worker);
        const std::string name = it != connected.end() ? it->second.name : std::string();
        s.drop = in_round(FedAvgTesting::value_for(testing_.secagg_drop(), name), round.number);
        s.cheat = in_round(FedAvgTesting::value_for(testing_.secagg_cheat(), name), round.number);
        s.encode(ins.message);
      }
      std::vector<Failure> failures = protocol.run(cohort, std::move(instructions), deadline);
      *result_ = std::move(protocol.result());
      if (result_->ok) {
        taken.figures = result_->figures;
        rule.add_sum(round, std::move(result_->sum), result_->weight_sum, result_->figures.size());
      }
      return failures;
    } catch (const Error& e) {
      result_->ok = false;
      result_->failure = e.what();
      return std::vector<Failure>{};
    }
  }

  void close(Round& round) override {
    if (result_ && !result_->ok) {
      const std::string why = result_->failure;
      last_.clear();
      result_.reset();
      FEDRA_FAIL("round {}: {}", round.number, why);
    }
    last_.clear();
    if (!result_) return;
    last_ = {{"secagg_dropped", static_cast<int64_t>(result_->dropped)},
             {"secagg_refused", static_cast<int64_t>(result_->refused)},
             {"secagg_worker_cpu_s_max", result_->worker_cpu_s},
             {"secagg_clipped", static_cast<int64_t>(result_->clipped)}};
    result_.reset();
  }
  void round_metrics(const Round&, Metrics& line) const override { line.insert(line.end(), last_.begin(), last_.end()); }

 private:
  // NAME:VALUE or NAME:VALUE@ROUND (that round only).
  static std::string in_round(std::string v, uint32_t round) {
    const auto at = v.find('@');
    if (at == std::string::npos) return v;
    return v.substr(at + 1) == std::to_string(round) ? v.substr(0, at) : std::string();
  }

  SecAggOptions o_;
  FedAvgTesting testing_;
  uint64_t seed_ = 0;
  std::optional<SecAggRound::Result> result_;  // this round's, until close()
  Metrics last_;                               // its figures, for the line of a round that updated
};

class SecAggWorkerStage : public WorkerStage {
 public:
  std::optional<Message> deliver(LocalFit& fit, WorkerLink& link) override {
    const SecAggIns ins = SecAggIns::decode(fit.request);
    if (!ins.on) return std::nullopt;
    // The update leaves this worker only masked, summed with the others' by the protocol.
    const Message figures = fit.result.encode();
    return secagg_worker(ins, fit.request.round, fit.ins.weights, fit.result.weights, figures.metrics, fit.ctx, link);
  }
};

}  // namespace

std::unique_ptr<Stage> secagg_stage(const FedAvgOptions& o) {
  return o.secure().secagg() ? std::make_unique<SecAggStage>(o.secure(), o.testing()) : nullptr;
}

std::unique_ptr<WorkerStage> secagg_worker_stage() { return std::make_unique<SecAggWorkerStage>(); }

}  // namespace fedra::fedavg
