#include "strategies/pipeline/pipeline.h"

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

#include "core/batching.h"
#include "core/cohort.h"
#include "core/model.h"
#include "core/optimizer.h"
#include "core/tensor_checks.h"
#include "core/training.h"
#include "strategies/model_parallel.h"

namespace fedra::pipeline {

namespace {

using Seconds = std::chrono::duration<double>;

NamedTensors parameters_of(const torch::nn::Sequential& stage) {
  NamedTensors out;
  for (const auto& p : stage->named_parameters()) out.emplace_back(p.key(), p.value().detach());
  return out;
}

std::string describe_stages(const std::vector<torch::nn::Sequential>& stages) {
  std::vector<std::string> parts;
  for (const auto& stage : stages) {
    parts.push_back(fmt::format("[{}] ({} weights)", fmt::join(layer_names(stage), " "), count_parameters(*stage)));
  }
  return fmt::format("{}", fmt::join(parts, " | "));
}

// ---------------------------------------------------------------------------------------------
// Coordinator

class PipelineCoordinator : public ModelParallelCoordinator {
 public:
  explicit PipelineCoordinator(const Job& job)
      : PipelineCoordinator(job, parse_options<PipelineOptions>(job.options)) {}

 private:
  PipelineCoordinator(const Job& job, const PipelineOptions& o)
      : ModelParallelCoordinator(job, RoundPlan::from(o, "pipeline", "stage", o.stages())), o_(o) {}

  void prepare(const RunContext& ctx) override {
    model_ = build_initial_model(job_.model, job_.seed, o_.init(), o_.init_skip(), ctx.dataset);
    stages_ = cut_stages(model_, o_.stages(), o_.cuts());
  }

  std::string describe(int64_t steps, int64_t rounds, int64_t per_round) const override {
    return fmt::format("pipeline: {} stages {}; {} micro-batches of {} in flight, weight stashing {}; {} micro-batches "
                       "in {} rounds of up to {}", stages_.size(), describe_stages(stages_), o_.effective_in_flight(),
                       o_.batch_size(), o_.stash() ? "on" : "off", steps, rounds, per_round);
  }

  Metrics run_round(Cohort& cohort, const RunContext& ctx, uint32_t round, int64_t first, int64_t count,
                    const std::vector<WorkerInfo>& ranked) override {
    const size_t n = ranked.size();
    std::vector<NamedTensors> expected(n);
    std::vector<Instruction> instructions;
    for (size_t s = 0; s < n; ++s) {
      expected[s] = parameters_of(stages_[s]);
      Message m(kRun, round);
      m.step = static_cast<uint64_t>(first);
      m.tensors = expected[s];
      for (const auto& [name, t] : opt_state_[s]) m.tensors.emplace_back("opt/" + name, t);
      m.options["steps"] = std::to_string(count);
      m.options["stage"] = std::to_string(s);
      instructions.push_back({ranked[s].id, std::move(m)});
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
        const at::Tensor& act = m.tensor("act");
        const at::Tensor& target = m.tensor("target");
        check_cut(s, act, w, "activations", step);
        FEDRA_REQUIRE(target.dim() >= 1 && target.size(0) == act.size(0), "{} sent {} activations with {} targets",
                      w.name, describe_tensor(act), describe_tensor(target));
        check_finite(m.tensors);
        cohort.post(ranked[s + 1].id, m);
      } else {
        FEDRA_REQUIRE(m.kind == kGrad, "unexpected '{}' from {} during a pipeline round", m.kind, w.name);
        FEDRA_REQUIRE(s > 0, "{} is stage 0 and sent a gradient", w.name);
        const at::Tensor& g = m.tensor("grad");
        check_cut(s - 1, g, w, "gradient", step);
        check_finite(m.tensors);
        cohort.post(ranked[s - 1].id, m);
      }
      ++relayed;
    };
    const std::vector<Message> done =
        exchange(cohort, round, ranked, std::move(instructions), kDone, on_part,
                 "a stage's weights live on its worker only, so the round cannot go on without it");

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
    Metrics line = loss_metrics(ctx, round, first, count, done[n - 1], ranked[n - 1].name);
    line.emplace_back("in_flight", o_.effective_in_flight());
    line.emplace_back("messages_relayed", relayed);
    line.emplace_back("stage_busy", fmt::format("{}", fmt::join(busy, ",")));
    return line;
  }

  PipelineOptions o_;
  std::vector<torch::nn::Sequential> stages_;
};

// ---------------------------------------------------------------------------------------------
// Worker

class PipelineWorker : public WorkerStrategy {
 public:
  explicit PipelineWorker(const Job& job) : job_(job), o_(parse_options<PipelineOptions>(job.options)) {
    check_loss_name(job.loss);
  }

  Message handle(const Message& request, WorkerContext& ctx) override {
    FEDRA_REQUIRE(request.kind == kRun, "pipeline worker cannot handle '{}'", request.kind);
    FEDRA_REQUIRE(ctx.link != nullptr, "pipeline needs the worker link");
    link_ = ctx.link;
    const OptionMap opts(kRun, request.options);
    stage_ = opts.get_int("stage", 0);
    const int64_t n = o_.stages();
    FEDRA_REQUIRE(stage_ >= 0 && stage_ < n, "pipeline: stage {} of a {}-stage pipeline", stage_, n);
    if (stage_ != built_stage_) {
      // Only this stage's layers are kept: the rest of the network is freed with `stages`.
      const auto stages = cut_stages(build_model(job_.model, job_.seed), n, o_.cuts());
      stage_model_ = stages[static_cast<size_t>(stage_)];
      built_stage_ = stage_;
    }
    last_ = stage_ == n - 1;
    if (stage_ == 0) {
      FEDRA_REQUIRE(ctx.data != nullptr && ctx.data->size() > 0, "worker {} (stage 0) has no training data", ctx.name);
      if (!batches_) batches_.emplace(o_.batches(), o_.batch_size(), job_.seed, ctx.name, 0);
    }
    data_ = ctx.data;
    load(request);
    const int64_t first = static_cast<int64_t>(request.step);
    const int64_t count = opts.get_int("steps", 0);
    timeout_ = std::chrono::milliseconds(static_cast<int64_t>(o_.step_timeout() * 1000));
    inbox_.clear();
    saved_.clear();
    compute_s_ = wait_s_ = 0;
    losses_ = at::zeros({count}, at::kDouble);
    examples_ = at::zeros({count}, at::kLong);
    first_ = first;

    const auto t0 = Clock::now();
    const int64_t warm = std::min(count, warmup_forwards(stage_, n, o_.effective_in_flight()));
    int64_t next = 0;
    for (; next < warm; ++next) forward(first + next);
    if (last_) {
      for (; next < count; ++next) forward(first + next);
    } else {
      for (int64_t j = 0; j < count; ++j) {
        backward(first + j);
        if (next < count) forward(first + next++);
      }
    }
    compute_s_ = Seconds(Clock::now() - t0).count() - wait_s_;

    Message done(kDone, request.round);
    for (const auto& [name, t] : parameters_of(stage())) done.tensors.emplace_back(name, t);
    for (auto& [name, t] : optimizer_->state()) done.tensors.emplace_back("opt/" + name, t);
    if (last_) {
      done.tensors.emplace_back("loss", losses_);
      done.tensors.emplace_back("examples", examples_);
    }
    done.metrics["compute_s"] = compute_s_;
    done.metrics["wait_s"] = wait_s_;
    return done;
  }

 private:
  torch::nn::Sequential& stage() { return stage_model_; }

  void load(const Message& request) {
    NamedTensors params, opt;
    for (const auto& [name, t] : request.tensors) {
      if (name.rfind("opt/", 0) == 0) opt.emplace_back(name.substr(4), t);
      else params.emplace_back(name, t);
    }
    load_model_state(*stage(), params);
    names_.clear();
    params_.clear();
    std::vector<at::Tensor> views;
    for (const auto& p : stage()->named_parameters()) {
      names_.push_back(p.key());
      params_.push_back(p.value());
      views.push_back(p.value().detach());
    }
    optimizer_.emplace(OptimizerConfig::from(o_), names_, views);
    if (!opt.empty()) optimizer_->load_state(opt);
  }

  // The coordinator's message of `kind` for micro-batch `step`; others arriving first wait.
  Message await(const char* kind, int64_t step) {
    for (auto it = inbox_.begin(); it != inbox_.end(); ++it) {
      if (it->kind == kind && static_cast<int64_t>(it->step) == step) {
        Message m = std::move(*it);
        inbox_.erase(it);
        return m;
      }
    }
    const auto t0 = Clock::now();
    for (;;) {
      Message m = link_->receive(timeout_);
      if (m.kind == kind && static_cast<int64_t>(m.step) == step) {
        wait_s_ += Seconds(Clock::now() - t0).count();
        return m;
      }
      const auto limit = static_cast<size_t>(4 * o_.effective_in_flight() + 8);
      FEDRA_REQUIRE((m.kind == kAct || m.kind == kGrad) && inbox_.size() < limit,
                    "pipeline stage {}: waiting for '{}' of micro-batch {}, got '{}' of micro-batch {}", stage_, kind,
                    step, m.kind, m.step);
      inbox_.push_back(std::move(m));
    }
  }

  void send(const char* kind, int64_t step, NamedTensors tensors) {
    Message m(kind);
    m.step = static_cast<uint64_t>(step);
    m.tensors = std::move(tensors);
    link_->send(m);
  }

  at::Tensor run_stage(const at::Tensor& input, int64_t step) {
    try {
      return stage()->forward(input);
    } catch (const c10::Error& e) {
      FEDRA_FAIL("pipeline stage {} cannot run micro-batch {} of {}: {}", stage_, step, describe_tensor(input),
                 e.what_without_backtrace());
    }
  }

  std::vector<at::Tensor> snapshot() const {
    std::vector<at::Tensor> copy;
    for (const auto& p : params_) copy.push_back(p.detach().clone());
    return copy;
  }

  void restore(const std::vector<at::Tensor>& values) {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < params_.size(); ++i) params_[i].copy_(values[i]);
  }

  void apply_gradients() {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < params_.size(); ++i) {
      const at::Tensor& g = params_[i].grad();
      optimizer_->step(i, g.defined() ? g : at::zeros_like(params_[i]));
      params_[i].mutable_grad() = at::Tensor();
    }
  }

  void forward(int64_t step) {
    at::Tensor input, target;
    if (stage_ == 0) {
      auto [x, y] = batches_->batch(*data_, step);
      input = x.contiguous();
      target = y.contiguous();
    } else {
      Message m = await(kAct, step);
      input = m.tensor("act");
      target = m.tensor("target");
    }
    if (last_) {  // forward, loss and backward back to back
      at::Tensor in = stage_ > 0 ? input.detach().requires_grad_() : input;
      at::Tensor loss = compute_loss(run_stage(in, step), target, job_.loss);
      loss.backward();
      if (stage_ > 0) send(kGrad, step, {{"grad", in.grad()}});
      apply_gradients();
      const int64_t rows = input.size(0);
      losses_[step - first_] = rows > 0 ? loss.item<double>() : 0.0;
      examples_[step - first_] = rows;
      return;
    }
    Saved saved{input, target, {}};
    if (o_.stash()) saved.weights = snapshot();
    at::Tensor out;
    {
      torch::NoGradGuard no_grad;
      out = run_stage(input, step);
    }
    if (step == o_.inject_bad_shape() && stage_ == 0 && out.dim() == 2 && out.size(1) > 1) {
      spdlog::warn("inject_bad_shape: sending micro-batch {}'s activations one column short", step);
      out = out.narrow(1, 0, out.size(1) - 1);
    }
    send(kAct, step, {{"act", out.contiguous()}, {"target", target}});
    saved_.emplace(step, std::move(saved));
  }

  void backward(int64_t step) {
    Message m = await(kGrad, step);
    const at::Tensor& grad = m.tensor("grad");
    auto it = saved_.find(step);
    FEDRA_ASSERT(it != saved_.end(), "stage {} has no forward of micro-batch {}", stage_, step);
    Saved saved = std::move(it->second);
    saved_.erase(it);
    std::vector<at::Tensor> live;
    if (o_.stash()) {
      live = snapshot();
      restore(saved.weights);
    }
    at::Tensor in = stage_ > 0 ? saved.input.detach().requires_grad_() : saved.input;
    at::Tensor out = run_stage(in, step);
    FEDRA_REQUIRE(grad.sizes() == out.sizes(), "pipeline stage {}: the gradient of micro-batch {} is {}, its output {}",
                  stage_, step, describe_tensor(grad), describe_tensor(out));
    out.backward(grad);
    if (o_.stash()) restore(live);
    if (stage_ > 0) send(kGrad, step, {{"grad", in.grad()}});
    apply_gradients();
  }

  struct Saved {
    at::Tensor input, target;
    std::vector<at::Tensor> weights;  // with stash: the weights of this micro-batch's forward
  };

  Job job_;
  PipelineOptions o_;
  torch::nn::Sequential stage_model_{nullptr};  // this worker's stage (its weights come with each run)
  int64_t built_stage_ = -1;
  int64_t stage_ = 0;
  bool last_ = false;
  WorkerLink* link_ = nullptr;
  const Dataset* data_ = nullptr;
  std::optional<BatchOrder> batches_;
  std::vector<std::string> names_;
  std::vector<at::Tensor> params_;
  std::optional<ParamOptimizer> optimizer_;
  std::deque<Message> inbox_;
  std::map<int64_t, Saved> saved_;
  std::chrono::milliseconds timeout_{60000};
  at::Tensor losses_, examples_;
  int64_t first_ = 0;
  double compute_s_ = 0, wait_s_ = 0;
};

}  // namespace

void PipelineOptions::validate() const {
  FEDRA_REQUIRE(stages_ >= 1, "pipeline.stages must be >= 1, got {}", stages_);
  FEDRA_REQUIRE(in_flight_ >= 0, "pipeline.in_flight must be >= 0 (0: the number of stages), got {}", in_flight_);
  FEDRA_REQUIRE(steps_ >= 0, "pipeline.steps must be >= 0, got {}", steps_);
  FEDRA_REQUIRE(steps_ > 0 || epochs_ >= 1, "pipeline needs steps > 0 or epochs >= 1");
  FEDRA_REQUIRE(steps_per_round_ >= 0, "pipeline.steps_per_round must be >= 0 (0: one round per epoch), got {}",
                steps_per_round_);
  FEDRA_REQUIRE(batch_size_ >= 1, "pipeline.batch_size must be >= 1, got {}", batch_size_);
  OptimizerConfig::from(*this).validate();
  check_batches_mode(batches_, "pipeline.batches");
  FEDRA_REQUIRE(step_timeout_ > 0, "pipeline.step_timeout must be > 0 seconds, got {}", step_timeout_);
  FEDRA_REQUIRE(eval_every_ >= 0, "pipeline.eval_every must be >= 0, got {}", eval_every_);
  check_initial_model_options(init_, init_skip_, "pipeline.");
}

int64_t warmup_forwards(int64_t stage, int64_t stages, int64_t in_flight) {
  if (stage == stages - 1) return 1;
  return std::max<int64_t>(1, in_flight - stage);
}

std::vector<torch::nn::Sequential> cut_stages(const torch::nn::Sequential& full, int64_t stages,
                                              const std::string& cuts) {
  const std::vector<std::string> names = layer_names(full);
  const std::string listing = fmt::format("{}", fmt::join(names, ", "));
  std::vector<int64_t> weights;  // per layer
  for (const auto& child : full->named_children()) weights.push_back(count_parameters(*child.value()));
  std::vector<size_t> starts = {0};  // the first layer of each stage
  if (!cuts.empty()) {
    size_t at = 0;
    while (at <= cuts.size()) {
      const size_t comma = cuts.find(',', at);
      const std::string name = cuts.substr(at, comma == std::string::npos ? std::string::npos : comma - at);
      const auto it = std::find(names.begin(), names.end(), name);
      FEDRA_REQUIRE(it != names.end(), "pipeline.cuts: the model has no layer '{}'; its layers are {}", name, listing);
      const auto next = static_cast<size_t>(it - names.begin()) + 1;
      FEDRA_REQUIRE(next > starts.back() && next < names.size(),
                    "pipeline.cuts: '{}' leaves an empty stage (cuts go in layer order, before the last layer; "
                    "layers: {})", name, listing);
      starts.push_back(next);
      if (comma == std::string::npos) break;
      at = comma + 1;
    }
    FEDRA_REQUIRE(static_cast<int64_t>(starts.size()) == stages, "pipeline.cuts names {} layer(s); {} stages need {}",
                  starts.size() - 1, stages, stages - 1);
  } else {
    // Stages start at layers with parameters, chosen so the stages' weight counts come as close
    // as they can to equal shares.
    std::vector<size_t> param_layers;
    std::vector<int64_t> before;  // weights before each parameter layer
    int64_t total = 0;
    for (size_t i = 0; i < weights.size(); ++i) {
      if (weights[i] > 0) {
        param_layers.push_back(i);
        before.push_back(total);
      }
      total += weights[i];
    }
    FEDRA_REQUIRE(static_cast<int64_t>(param_layers.size()) >= stages,
                  "pipeline: {} stages need {} layers with weights; this model has {} ({})", stages, stages,
                  param_layers.size(), listing);
    size_t prev = 0;
    for (int64_t s = 1; s < stages; ++s) {
      const double target = static_cast<double>(total) * static_cast<double>(s) / static_cast<double>(stages);
      const size_t last_allowed = param_layers.size() - static_cast<size_t>(stages - s);
      size_t best = prev + 1;
      for (size_t j = prev + 1; j <= last_allowed; ++j) {
        if (std::abs(static_cast<double>(before[j]) - target) < std::abs(static_cast<double>(before[best]) - target)) best = j;
      }
      starts.push_back(param_layers[best]);
      prev = best;
    }
  }
  std::vector<torch::nn::Sequential> out;
  for (size_t s = 0; s < starts.size(); ++s) out.emplace_back(torch::nn::Sequential());
  size_t i = 0, s = 0;
  for (const auto& any : *full) {
    if (s + 1 < starts.size() && i == starts[s + 1]) ++s;
    out[s]->push_back(names[i], any);
    ++i;
  }
  return out;
}

StrategyInfo pipeline_strategy() {
  StrategyInfo info;
  info.name = "pipeline";
  info.description = "Pipeline parallelism: stages on workers, micro-batches in flight, 1F1B";
  info.options = option_specs<PipelineOptions>();
  info.make_coordinator = [](const Job& job) { return std::make_unique<PipelineCoordinator>(job); };
  info.make_worker = [](const Job& job) { return std::make_unique<PipelineWorker>(job); };
  return info;
}

}  // namespace fedra::pipeline
