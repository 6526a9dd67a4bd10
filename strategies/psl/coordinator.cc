// psl's coordinator half: it holds every weight and the optimiser, and scatter-adds the
// workers' partial gradients.
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
#include "core/loops/stepped_strategy.h"
#include "core/model/model.h"
#include "core/model/script_model.h"
#include "core/training/optimizer.h"
#include "core/training/training.h"
#include "strategies/psl/internal.h"
#include "strategies/run_message.h"

namespace fedra::psl {

namespace {

class PslCoordinator : public SteppedStrategy {
 public:
  PslCoordinator(const Job& job, PslOptions options)
      : SteppedStrategy(job, "psl", options.eval()), o_(std::move(options)) {
    refuse_torchscript(job.model, "psl", "it builds class towers from its own psnet spec");
    FEDRA_REQUIRE(job.loss == "psl" || job.loss == "psl2", "the psl strategy needs --loss psl or psl2, got '{}'",
                  job.loss);
  }

 protected:
  void prepare(const RunContext& ctx) override {
    model_ = build_model(job().model, job().seed);
    classes_ = classes_of(*model_);
    std::vector<std::string> names;
    for (const auto& p : model_->named_parameters()) {
      names.push_back(p.key());
      params_.push_back(p.value().detach());
      index_[p.key()] = params_.size() - 1;
    }
    optimizer_.emplace(OptimizerConfig::from(o_.optim()), names, params_);
    if (o_.data() == PslData::kCoordinator) {
      FEDRA_REQUIRE(!ctx.dataset.empty(), "psl data=coordinator needs the training set on the coordinator (--dataset)");
      train_ = load_dataset(ctx.dataset, Splits::kTrain).train;
      FEDRA_REQUIRE(train_.size() > 0, "psl data=coordinator: '{}' has no training examples", ctx.dataset);
      batches_.emplace(enum_name(o_.schedule().batches()), o_.schedule().batch_size(), job().seed, "coordinator");
    }
  }

  size_t workers_needed() const override { return 1; }

  void start(Cohort&, const std::vector<WorkerInfo>& workers) override {
    const int64_t max_workers = classes_ * (classes_ - 1) / 2;
    FEDRA_REQUIRE(static_cast<int64_t>(workers.size()) <= max_workers,
                  "psl: {} workers but only {} class pairs to share among them", workers.size(), max_workers);
    const auto shares = assign_pairs(classes_, static_cast<int64_t>(workers.size()));
    const int64_t total_weights = count_parameters(*model_);
    for (size_t k = 0; k < workers.size(); ++k) {
      Part part;
      part.id = workers[k].id;
      part.name = workers[k].name;
      part.share = shares[k];
      part.map = sub_network_map(*model_, classes_, part.share.towers);
      part.towers_text = join_ints(part.share.towers);
      part.pairs_text = pairs_text(part.share);
      const int64_t n = sub_network_size(*model_, part.map);
      spdlog::info("psl: {} owns {} pair(s) over {} tower(s) [{}]: {} of {} weights ({:.1f}%)", part.name,
                   part.share.pairs.size(), part.share.towers.size(), join_ints(part.share.towers), n,
                   total_weights, 100.0 * static_cast<double>(n) / static_cast<double>(total_weights));
      part_of_[part.id] = parts_.size();
      parts_.push_back(std::move(part));
    }

  }

  StepPlan plan_steps(const std::vector<WorkerInfo>& workers) const override {
    int64_t n = train_.size();
    if (o_.data() == PslData::kWorker) {
      n = 0;
      for (const auto& w : workers) n = std::max(n, w.num_examples);
    }
    return StepPlan::from(o_.schedule(), n);
  }

  std::string describe(const StepPlan& p) const override {
    return fmt::format("psl: {} steps in {} rounds of up to {} over {} worker(s); data={}", p.total, p.rounds(),
                       p.per_round, parts_.size(), enum_name(o_.data()));
  }

  Metrics run_round(Cohort& cohort, const RunContext&, const RoundSteps& r) override {
    refresh_owners(cohort);
    const uint64_t up0 = cohort.bytes_up(), down0 = cohort.bytes_down();
    double loss_sum = 0;
    for (int64_t step = r.first; step < r.first + r.count; ++step) loss_sum += run_step(cohort, r.round, step);
    const auto count = static_cast<double>(r.count);
    Metrics line;
    line.emplace_back("status", std::string("ok"));
    line.emplace_back("first_step", r.first);
    line.emplace_back("steps", r.count);
    line.emplace_back("train_loss", loss_sum / count);
    line.emplace_back("workers_asked", static_cast<int64_t>(parts_.size()));
    line.emplace_back("workers_ok", static_cast<int64_t>(parts_.size()));
    line.emplace_back("workers_failed", int64_t{0});
    line.emplace_back("bytes_per_step",
                      static_cast<double>(cohort.bytes_up() - up0 + cohort.bytes_down() - down0) / count);
    return line;
  }

  torch::nn::Sequential model() const override { return model_; }
  // Workers hold nothing between steps (each step brings their sub-network's weights): the
  // coordinator's weights and optimiser are the state. The pair assignment follows from the
  // workers' names (start()), so a resumed run with the same workers assigns the same.
  NamedTensors state() const override { return model_and_optimizer_state(*model_, *optimizer_); }
  void restore(const NamedTensors& state) override { restore_model_and_optimizer(state, *model_, *optimizer_, "psl"); }

 private:
  // A worker that left and came back under its name (a round's retry) has a new id: each part
  // follows its owner's name.
  void refresh_owners(const Cohort& cohort) {
    std::map<std::string, WorkerId> by_name;
    for (const auto& w : cohort.workers()) by_name[w.name] = w.id;
    part_of_.clear();
    for (size_t k = 0; k < parts_.size(); ++k) {
      const auto it = by_name.find(parts_[k].name);
      FEDRA_REQUIRE(it != by_name.end(), "psl: {} (owner of the pairs {}) is not connected; its elements are "
                    "needed for every step", parts_[k].name, parts_[k].pairs_text);
      parts_[k].id = it->second;
      part_of_[it->second] = k;
    }
  }

  struct Part {
    WorkerId id = 0;
    std::string name;
    Share share;
    std::vector<SubParam> map;
    std::string towers_text, pairs_text;  // the share as the step options carry it
  };

  // One step: sub-network weights out, partial gradients back, scatter-added, one optimiser step.
  double run_step(Cohort& cohort, uint32_t round, int64_t step) {
    at::Tensor x, y;
    if (o_.data() == PslData::kCoordinator) std::tie(x, y) = batches_->batch(train_, step);
    std::vector<Instruction> instructions;
    for (const auto& part : parts_) {
      StepIns ins;
      ins.round = round;
      ins.step = step;
      for (const auto& sp : part.map) {
        const at::Tensor& full = params_[index_.at(sp.name)];
        ins.weights.emplace_back(sp.name, sp.rows.defined() ? full.index_select(0, sp.rows) : full);
      }
      if (o_.data() == PslData::kCoordinator) {
        auto [rows, local] = select_rows(y, part.share.towers);
        ins.x = x.index_select(0, rows);
        ins.y = local;
        ins.batch = x.size(0);
      }
      ins.towers = part.towers_text;
      ins.pairs = part.pairs_text;
      instructions.push_back({part.id, ins.encode()});
    }
    // Each reply is checked as it arrives and kept; the sum is taken afterwards in part order, so
    // its float rounding, and the run, do not depend on the order the replies arrived in.
    std::vector<std::optional<StepGrad>> got(parts_.size());
    const auto deadline = Clock::now() + o_.schedule().step_timeout_ms();
    const auto failures = cohort.request_all(std::move(instructions), deadline, [&](const WorkerInfo& w, Message&& r) {
      const size_t k = part_of_.at(w.id);
      const Part& part = parts_[k];
      StepGrad grad = StepGrad::decode(std::move(r), w.name);
      FEDRA_REQUIRE(grad.grads.size() == part.map.size(), "{} sent {} gradients for a sub-network of {} tensors",
                    w.name, grad.grads.size(), part.map.size());
      check_finite(grad.grads);
      for (size_t i = 0; i < part.map.size(); ++i) {
        const SubParam& sp = part.map[i];
        const at::Tensor& g = grad.grads[i].second;
        const at::Tensor& full = params_[index_.at(sp.name)];
        const int64_t rows = sp.rows.defined() ? sp.rows.size(0) : full.size(0);
        FEDRA_REQUIRE(grad.grads[i].first == sp.name && g.dim() == full.dim() && g.size(0) == rows &&
                          g.numel() * full.size(0) == full.numel() * rows,
                      "gradient '{}' {} from {} does not fit '{}'", grad.grads[i].first, describe_tensor(g), w.name,
                      sp.name);
      }
      got[k] = std::move(grad);
    });
    if (!failures.empty()) {
      FEDRA_FAIL("psl step {} failed: {} (every worker's elements are needed for the gradient)", step,
                 describe_failures(failures));
    }
    std::vector<at::Tensor> grads;
    for (const auto& p : params_) grads.push_back(at::zeros_like(p));
    double loss = 0;
    for (size_t k = 0; k < parts_.size(); ++k) {
      FEDRA_ASSERT(got[k].has_value(), "{} finished its step without a reply or a failure", parts_[k].name);
      for (size_t i = 0; i < parts_[k].map.size(); ++i) {
        const SubParam& sp = parts_[k].map[i];
        at::Tensor& acc = grads[index_.at(sp.name)];
        if (sp.rows.defined()) acc.index_add_(0, sp.rows, got[k]->grads[i].second);
        else acc.add_(got[k]->grads[i].second);
      }
      loss += got[k]->loss;
    }
    for (size_t i = 0; i < params_.size(); ++i) optimizer_->step(i, grads[i]);
    return loss;
  }

  PslOptions o_;
  torch::nn::Sequential model_{nullptr};
  int64_t classes_ = 0;
  std::vector<at::Tensor> params_;
  std::map<std::string, size_t> index_;
  std::optional<ParamOptimizer> optimizer_;
  Dataset train_;
  std::optional<BatchOrder> batches_;
  std::vector<Part> parts_;
  std::map<WorkerId, size_t> part_of_;  // worker -> its index in parts_
};

}  // namespace

std::unique_ptr<CoordinatorStrategy> new_coordinator(const Job& job, const PslOptions& options) {
  return std::make_unique<PslCoordinator>(job, options);
}

}  // namespace fedra::psl
