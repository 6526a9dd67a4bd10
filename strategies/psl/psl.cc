#include "strategies/psl/psl.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <numeric>
#include <optional>
#include <random>
#include <set>
#include <sstream>

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "core/batching.h"
#include "core/cohort.h"
#include "core/model.h"
#include "core/optimizer.h"
#include "core/tensor_checks.h"
#include "core/training.h"

namespace fedra::psl {

namespace {

using Seconds = std::chrono::duration<double>;

std::string join_ints(const std::vector<int64_t>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s;
}

std::vector<int64_t> parse_ints(const std::string& text) {
  std::vector<int64_t> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (!item.empty()) out.push_back(std::stoll(item));
  }
  return out;
}

// Pairs as "i-j,i-j".
std::string pairs_text(const Share& s) {
  std::string out;
  for (const auto& [i, j] : s.pairs) out += (out.empty() ? "" : ",") + fmt::format("{}-{}", i, j);
  return out;
}

Share parse_share(const std::string& towers, const std::string& pairs) {
  Share s;
  s.towers = parse_ints(towers);
  std::stringstream ss(pairs);
  std::string item;
  while (std::getline(ss, item, ',')) {
    const auto dash = item.find('-');
    FEDRA_REQUIRE(dash != std::string::npos, "psl: bad pair '{}'", item);
    s.pairs.emplace_back(std::stoll(item.substr(0, dash)), std::stoll(item.substr(dash + 1)));
  }
  return s;
}

int64_t classes_of(torch::nn::Module& model) {
  for (const auto& p : model.named_parameters()) {
    if (p.key() == "sl3.weight") return p.value().size(0);
  }
  FEDRA_FAIL("the psl strategy needs the psnet model (towers of separable layers); use --model psnet");
}

// ---------------------------------------------------------------------------------------------
// Coordinator

class PslCoordinator : public CoordinatorStrategy {
 public:
  explicit PslCoordinator(const Job& job) : job_(job), o_(parse_options<PslOptions>(job.options)) {
    FEDRA_REQUIRE(job.loss == "psl" || job.loss == "psl2", "the psl strategy needs --loss psl or psl2, got '{}'",
                  job.loss);
  }

  void run(Cohort& cohort, RunContext& ctx) override {
    model_ = build_model(job_.model, job_.seed);
    classes_ = classes_of(*model_);
    std::vector<std::string> names;
    for (const auto& p : model_->named_parameters()) {
      names.push_back(p.key());
      params_.push_back(p.value().detach());
      index_[p.key()] = params_.size() - 1;
    }
    optimizer_.emplace(OptimizerConfig::from(o_), names, params_);
    if (o_.data() == "coordinator") {
      FEDRA_REQUIRE(!ctx.dataset.empty(), "psl data=coordinator needs the training set on the coordinator (--dataset)");
      train_ = load_dataset(ctx.dataset, Splits::kTrain).train;
      FEDRA_REQUIRE(train_.size() > 0, "psl data=coordinator: '{}' has no training examples", ctx.dataset);
      batches_.emplace(o_.batches(), o_.batch_size(), job_.seed, "coordinator");
    }
    const auto wait = ctx.wait_timeout;
    if (!cohort.wait_for_workers(1, Clock::now() + wait)) {
      FEDRA_THROW(ErrorKind::kOverloaded, "psl needs at least one worker; none connected within {} s",
                  wait.count() / 1000.0);
    }
    auto workers = cohort.workers();
    std::sort(workers.begin(), workers.end(), [](const WorkerInfo& a, const WorkerInfo& b) { return a.name < b.name; });
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

    int64_t n = train_.size();
    if (o_.data() == "worker") {
      n = 0;
      for (const auto& w : workers) n = std::max(n, w.num_examples);
    }
    const int64_t total = o_.steps() > 0 ? o_.steps() : o_.epochs() * steps_per_epoch(n, o_.batch_size());
    const int64_t per_epoch = std::max<int64_t>(1, steps_per_epoch(n, o_.batch_size()));
    const int64_t per_round = o_.steps_per_round() > 0 ? o_.steps_per_round() : per_epoch;
    const auto rounds = static_cast<uint32_t>((total + per_round - 1) / per_round);
    int64_t step = 0;
    for (uint32_t round = 1; step < total; ++round) {
      if (ctx.stop_requested()) FEDRA_FAIL("interrupted");
      const auto t0 = Clock::now();
      const uint64_t up0 = cohort.bytes_up(), down0 = cohort.bytes_down();
      const int64_t count = std::min(per_round, total - step);
      double loss_sum = 0;
      for (int64_t s = 0; s < count; ++s, ++step) loss_sum += run_step(cohort, round, step);
      const double fit_s = Seconds(Clock::now() - t0).count();
      Metrics line;
      line.emplace_back("status", std::string("ok"));
      line.emplace_back("first_step", step - count);
      line.emplace_back("steps", count);
      line.emplace_back("train_loss", loss_sum / static_cast<double>(count));
      line.emplace_back("workers_asked", static_cast<int64_t>(parts_.size()));
      line.emplace_back("workers_ok", static_cast<int64_t>(parts_.size()));
      line.emplace_back("workers_failed", int64_t{0});
      line.emplace_back("fit_s", fit_s);
      line.emplace_back("step_ms", 1000 * fit_s / static_cast<double>(count));
      line.emplace_back("bytes_per_step", static_cast<double>(cohort.bytes_up() - up0 + cohort.bytes_down() - down0) /
                                              static_cast<double>(count));
      line.emplace_back("epoch", static_cast<double>(step) / static_cast<double>(per_epoch));
      const bool last = step >= total;
      if (ctx.test_set != nullptr && o_.eval_every() > 0 &&
          (round % static_cast<uint32_t>(o_.eval_every()) == 0 || last)) {
        const EvalStats e = evaluate_model(model_, *ctx.test_set, job_.loss);
        line.emplace_back("test_accuracy", e.accuracy);
        line.emplace_back("test_loss", e.loss);
      }
      ctx.report_round(round, rounds, std::move(line));
    }
    if (!ctx.out_dir.empty()) save_model_file(ctx.out_dir + "/model.bin", model_state(*model_));
  }

 private:
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
    if (o_.data() == "coordinator") std::tie(x, y) = batches_->batch(train_, step);
    std::vector<Instruction> instructions;
    for (const auto& part : parts_) {
      Message m(kStep, round);
      m.step = static_cast<uint64_t>(step);
      for (const auto& sp : part.map) {
        const at::Tensor& full = params_[index_.at(sp.name)];
        m.tensors.emplace_back(sp.name, sp.rows.defined() ? full.index_select(0, sp.rows) : full);
      }
      if (o_.data() == "coordinator") {
        auto [rows, local] = select_rows(y, part.share.towers);
        m.tensors.emplace_back("x", x.index_select(0, rows));
        m.tensors.emplace_back("y", local);
        m.options["batch"] = std::to_string(x.size(0));
      }
      m.options["towers"] = part.towers_text;
      m.options["pairs"] = part.pairs_text;
      instructions.push_back({part.id, std::move(m)});
    }
    std::vector<at::Tensor> grads;
    for (const auto& p : params_) grads.push_back(at::zeros_like(p));
    double loss = 0;
    const auto deadline = Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(o_.step_timeout() * 1000));
    const auto failures = cohort.request_all(std::move(instructions), deadline, [&](const WorkerInfo& w, Message&& r) {
      const Part& part = parts_[part_of_.at(w.id)];
      FEDRA_REQUIRE(r.kind == kGrad, "expected '{}' from {}, got '{}'", kGrad, w.name, r.kind);
      FEDRA_REQUIRE(r.tensors.size() == part.map.size(), "{} sent {} gradients for a sub-network of {} tensors",
                    w.name, r.tensors.size(), part.map.size());
      check_finite(r.tensors);
      for (size_t i = 0; i < part.map.size(); ++i) {
        const SubParam& sp = part.map[i];
        const at::Tensor& g = r.tensors[i].second;
        at::Tensor& acc = grads[index_.at(sp.name)];
        const int64_t rows = sp.rows.defined() ? sp.rows.size(0) : acc.size(0);
        FEDRA_REQUIRE(r.tensors[i].first == sp.name && g.dim() == acc.dim() && g.size(0) == rows &&
                          g.numel() * acc.size(0) == acc.numel() * rows,
                      "gradient '{}' {} from {} does not fit '{}'", r.tensors[i].first, describe_tensor(g), w.name,
                      sp.name);
        if (sp.rows.defined()) acc.index_add_(0, sp.rows, g);
        else acc.add_(g);
      }
      loss += r.metric("loss");
    });
    if (!failures.empty()) {
      FEDRA_FAIL("psl step {} failed: {} (every worker's elements are needed for the gradient)", step,
                 describe_failures(failures));
    }
    for (size_t i = 0; i < params_.size(); ++i) optimizer_->step(i, grads[i]);
    return loss;
  }

  Job job_;
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

// ---------------------------------------------------------------------------------------------
// Worker

class PslWorker : public WorkerStrategy {
 public:
  explicit PslWorker(const Job& job) : job_(job), o_(parse_options<PslOptions>(job.options)) {
    FEDRA_REQUIRE(job.loss == "psl" || job.loss == "psl2", "the psl strategy needs --loss psl or psl2, got '{}'",
                  job.loss);
    classes_of(*build_model(job.model, job.seed));  // a clear error for a model without towers
  }

  Message handle(const Message& request, WorkerContext& ctx) override {
    FEDRA_REQUIRE(request.kind == kStep, "psl worker cannot handle '{}'", request.kind);
    const Share share = parse_share(request.option("towers"), request.option_or("pairs", ""));
    if (share.towers != towers_) {  // the sub-network over these towers (weights come next)
      towers_ = share.towers;
      sub_ = build_model(fmt::format("psnet:classes={}", towers_.size()), job_.seed);
    }
    NamedTensors weights;
    at::Tensor x, local;
    int64_t batch = 0;
    for (const auto& [name, t] : request.tensors) {
      if (name == "x") x = t;
      else if (name == "y") local = t;
      else weights.emplace_back(name, t);
    }
    load_model_state(*sub_, weights);
    if (o_.data() == "coordinator") {
      FEDRA_REQUIRE(x.defined() && local.defined(), "psl.step without the batch rows (data=coordinator)");
      batch = std::stoll(request.option("batch"));
    } else {
      FEDRA_REQUIRE(ctx.data != nullptr && ctx.data->size() > 0, "worker {} has no training data", ctx.name);
      if (!batches_) batches_.emplace(o_.batches(), o_.batch_size(), job_.seed, ctx.name);
      auto [bx, by] = batches_->batch(*ctx.data, static_cast<int64_t>(request.step));
      auto [rows, l] = select_rows(by, towers_);
      x = bx.index_select(0, rows);
      local = l;
      batch = bx.size(0);
    }
    for (auto& p : sub_->parameters()) p.mutable_grad() = at::Tensor();
    Message reply(kGrad, request.round);
    reply.step = request.step;
    double loss_value = 0;
    if (x.size(0) > 0) {
      at::Tensor loss = element_loss(sub_->forward(x), local, share, batch, job_.loss == "psl2");
      loss.backward();
      loss_value = loss.item<double>();
    }
    for (const auto& p : sub_->named_parameters()) {
      const at::Tensor& g = p.value().grad();
      reply.tensors.emplace_back(p.key(), g.defined() ? g : at::zeros_like(p.value()));
    }
    reply.metrics["loss"] = loss_value;
    reply.metrics["examples"] = static_cast<double>(x.size(0));
    return reply;
  }

 private:
  Job job_;
  PslOptions o_;
  std::vector<int64_t> towers_;
  torch::nn::Sequential sub_{nullptr};
  std::optional<BatchOrder> batches_;
};

}  // namespace

std::vector<Share> assign_pairs(int64_t classes, int64_t workers, int64_t restarts) {
  const int64_t npairs = classes * (classes - 1) / 2;
  FEDRA_REQUIRE(classes >= 2 && workers >= 1 && workers <= npairs,
                "psl: {} workers cannot share the {} class pairs of {} classes (1 to {} workers)", workers, npairs,
                classes, npairs);
  std::vector<std::pair<int64_t, int64_t>> pairs;
  for (int64_t i = 0; i < classes; ++i) {
    for (int64_t j = i + 1; j < classes; ++j) pairs.emplace_back(i, j);
  }
  const int64_t base = npairs / workers, extra = npairs % workers;  // the first `extra` get one more
  std::vector<Share> best;
  std::pair<int64_t, int64_t> best_score{INT64_MAX, INT64_MAX};
  std::mt19937_64 rng(12345);
  for (int64_t r = 0; r < std::max<int64_t>(1, restarts); ++r) {
    auto order = pairs;
    if (r > 0) std::shuffle(order.begin(), order.end(), rng);
    std::vector<std::set<int64_t>> towers(static_cast<size_t>(workers));
    std::vector<Share> shares(static_cast<size_t>(workers));
    for (const auto& [i, j] : order) {
      size_t pick = 0;
      std::tuple<int64_t, int64_t, int64_t> pick_cost{INT64_MAX, INT64_MAX, INT64_MAX};
      for (size_t k = 0; k < shares.size(); ++k) {
        const int64_t cap = base + (static_cast<int64_t>(k) < extra ? 1 : 0);
        if (static_cast<int64_t>(shares[k].pairs.size()) >= cap) continue;
        const int64_t grow = (towers[k].count(i) ? 0 : 1) + (towers[k].count(j) ? 0 : 1);
        const std::tuple<int64_t, int64_t, int64_t> cost{grow, static_cast<int64_t>(towers[k].size()),
                                                         static_cast<int64_t>(shares[k].pairs.size())};
        if (cost < pick_cost) {
          pick_cost = cost;
          pick = k;
        }
      }
      shares[pick].pairs.emplace_back(i, j);
      towers[pick].insert(i);
      towers[pick].insert(j);
    }
    int64_t worst = 0, sum = 0;
    for (const auto& t : towers) {
      worst = std::max<int64_t>(worst, static_cast<int64_t>(t.size()));
      sum += static_cast<int64_t>(t.size());
    }
    if (std::make_pair(worst, sum) < best_score) {
      best_score = {worst, sum};
      for (size_t k = 0; k < shares.size(); ++k) {
        shares[k].towers.assign(towers[k].begin(), towers[k].end());
        std::sort(shares[k].pairs.begin(), shares[k].pairs.end());
      }
      best = shares;
    }
  }
  return best;
}

std::vector<SubParam> sub_network_map(const torch::nn::Module& full, int64_t classes,
                                      const std::vector<int64_t>& towers) {
  std::vector<SubParam> out;
  for (const auto& p : full.named_parameters()) {
    SubParam sp;
    sp.name = p.key();
    if (p.key().rfind("conv1.", 0) != 0) {  // per tower: rows r*t .. r*t + r - 1
      const int64_t rows = p.value().size(0);
      FEDRA_REQUIRE(rows % classes == 0, "psl: parameter '{}' has {} rows, not a multiple of {} towers", p.key(),
                    rows, classes);
      const int64_t r = rows / classes;
      std::vector<int64_t> idx;
      for (int64_t t : towers) {
        FEDRA_REQUIRE(t >= 0 && t < classes, "psl: tower {} of {}", t, classes);
        for (int64_t u = 0; u < r; ++u) idx.push_back(r * t + u);
      }
      sp.rows = torch::tensor(idx, torch::kLong);
    }
    out.push_back(std::move(sp));
  }
  return out;
}

int64_t sub_network_size(const torch::nn::Module& full, const std::vector<SubParam>& map) {
  std::map<std::string, at::Tensor> params;
  for (const auto& p : full.named_parameters()) params[p.key()] = p.value();
  int64_t n = 0;
  for (const auto& sp : map) {
    const at::Tensor& t = params.at(sp.name);
    n += sp.rows.defined() ? t.numel() / t.size(0) * sp.rows.size(0) : t.numel();
  }
  return n;
}

std::pair<at::Tensor, at::Tensor> select_rows(const at::Tensor& targets, const std::vector<int64_t>& towers) {
  // local[c] = index of class c among the towers, or -1.
  int64_t max_class = 0;
  for (int64_t t : towers) max_class = std::max(max_class, t);
  const int64_t top = std::max<int64_t>(max_class + 1, targets.numel() > 0 ? targets.max().item<int64_t>() + 1 : 0);
  at::Tensor local = torch::full({top}, -1, torch::kLong);
  for (size_t k = 0; k < towers.size(); ++k) local[towers[k]] = static_cast<int64_t>(k);
  const at::Tensor mapped = local.index_select(0, targets.to(torch::kLong).reshape({-1}));
  const at::Tensor rows = (mapped >= 0).nonzero().reshape({-1});
  return {rows, mapped.index_select(0, rows)};
}

at::Tensor element_loss(const at::Tensor& scores, const at::Tensor& local_targets, const Share& share,
                        int64_t batch_size, bool squared) {
  const auto T = static_cast<int64_t>(share.towers.size());
  FEDRA_REQUIRE(scores.dim() == 2 && scores.size(1) == T && local_targets.size(0) == scores.size(0),
                "psl element loss: scores {} for {} towers and targets {}", describe_tensor(scores), T,
                describe_tensor(local_targets));
  std::map<int64_t, int64_t> local;
  for (int64_t k = 0; k < T; ++k) local[share.towers[static_cast<size_t>(k)]] = k;
  // owned[a][c] = 1 when the pair {tower a, tower c} is this worker's: elements (a, c) and (c, a).
  at::Tensor owned = torch::zeros({T, T}, scores.options());
  for (const auto& [i, j] : share.pairs) {
    const int64_t a = local.at(i), c = local.at(j);
    owned[a][c] = 1;
    owned[c][a] = 1;
  }
  const at::Tensor sy = scores.gather(1, local_targets.reshape({-1, 1}));
  const at::Tensor terms = ((scores - sy) * (squared ? 2.0 : 1.0)).exp() * owned.index_select(0, local_targets);
  return terms.sum() / static_cast<double>(std::max<int64_t>(1, batch_size));
}

void PslOptions::validate() const {
  FEDRA_REQUIRE(epochs_ >= 1, "psl.epochs must be >= 1, got {}", epochs_);
  FEDRA_REQUIRE(steps_ >= 0, "psl.steps must be >= 0, got {}", steps_);
  FEDRA_REQUIRE(steps_per_round_ >= 0, "psl.steps_per_round must be >= 0 (0: one round per epoch), got {}",
                steps_per_round_);
  FEDRA_REQUIRE(batch_size_ >= 1, "psl.batch_size must be >= 1, got {}", batch_size_);
  FEDRA_REQUIRE(batches_ == "shuffle" || batches_ == "sequential", "psl.batches must be shuffle or sequential, got '{}'",
                batches_);
  FEDRA_REQUIRE(data_ == "coordinator" || data_ == "worker", "psl.data must be coordinator or worker, got '{}'", data_);
  OptimizerConfig::from(*this).validate();
  FEDRA_REQUIRE(step_timeout_ > 0, "psl.step_timeout must be > 0 seconds, got {}", step_timeout_);
  FEDRA_REQUIRE(eval_every_ >= 0, "psl.eval_every must be >= 0, got {}", eval_every_);
}

StrategyInfo psl_strategy() {
  StrategyInfo info;
  info.name = "psl";
  info.description = "Partially separable element loss: each worker differentiates only its class towers";
  info.options = option_specs<PslOptions>();
  info.make_coordinator = [](const Job& job) { return std::make_unique<PslCoordinator>(job); };
  info.make_worker = [](const Job& job) { return std::make_unique<PslWorker>(job); };
  return info;
}

}  // namespace fedra::psl
