#include "strategies/tensor/tensor.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <deque>
#include <map>
#include <optional>

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "core/batching.h"
#include "core/cohort.h"
#include "core/model.h"
#include "core/optimizer.h"
#include "core/tensor_checks.h"
#include "core/training.h"
#include "strategies/model_parallel.h"

namespace fedra::tensor {

namespace {

using Seconds = std::chrono::duration<double>;

std::pair<int64_t, int64_t> even_range(int64_t size, int64_t world, int64_t rank) {
  const int64_t base = size / world, extra = size % world;
  const int64_t begin = rank * base + std::min(rank, extra);
  return {begin, begin + base + (rank < extra ? 1 : 0)};
}

// Rank `rank`'s slices as shard_of names and shapes them, for checking what a worker receives
// (uninitialised: only the rank's own share of the model is allocated).
NamedTensors shard_layout(const ShardPlan& plan, int64_t rank) {
  NamedTensors out;
  for (size_t l = 0; l < plan.layers.size(); ++l) {
    const auto [b, e] = plan.ranges[l][static_cast<size_t>(rank)];
    if (plan.column(l)) {
      out.emplace_back(plan.layers[l] + ".weight", at::empty({e - b, plan.in[l]}));
      out.emplace_back(plan.layers[l] + ".bias", at::empty({e - b}));
    } else {
      out.emplace_back(plan.layers[l] + ".weight", at::empty({plan.out[l], e - b}));
      if (rank == 0) out.emplace_back(plan.layers[l] + ".bias", at::empty({plan.out[l]}));
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Coordinator

class TensorCoordinator : public ModelParallelCoordinator {
 public:
  explicit TensorCoordinator(const Job& job)
      : TensorCoordinator(job, parse_options<TensorOptions>(job.options)) {}

 private:
  TensorCoordinator(const Job& job, const TensorOptions& o)
      : ModelParallelCoordinator(job, RoundPlan::from(o, "tensor", "rank", o.workers())), o_(o) {}

  void prepare(const RunContext& ctx) override {
    model_ = build_initial_model(job_.model, job_.seed, o_.init(), o_.init_skip(), ctx.dataset);
    shards_ = plan_shards(model_, o_.workers());
  }

  std::string describe(int64_t steps, int64_t rounds, int64_t per_round) const override {
    return fmt::format("tensor: {} layers split {} ways; {} steps in {} rounds of up to {}", shards_.layers.size(),
                       shards_.world, steps, rounds, per_round);
  }

  struct Collective {
    std::string kind;
    std::vector<at::Tensor> parts;
    size_t count = 0;
  };

  Metrics run_round(Cohort& cohort, const RunContext& ctx, uint32_t round, int64_t first, int64_t count,
                    const std::vector<WorkerInfo>& ranked) override {
    const size_t world = ranked.size();
    const NamedTensors full = model_state(*model_);
    std::vector<NamedTensors> expected(world);
    std::vector<Instruction> instructions;
    for (size_t r = 0; r < world; ++r) {
      expected[r] = shard_of(shards_, full, static_cast<int64_t>(r));
      Message m(kRun, round);
      m.step = static_cast<uint64_t>(first);
      m.tensors = expected[r];
      for (const auto& [name, t] : opt_state_[r]) m.tensors.emplace_back("opt/" + name, t);
      m.options["steps"] = std::to_string(count);
      m.options["rank"] = std::to_string(r);
      m.options["world"] = std::to_string(world);
      instructions.push_back({ranked[r].id, std::move(m)});
    }

    std::map<std::pair<int64_t, int64_t>, Collective> pending;
    const int64_t end = first + count;
    auto on_part = [&](size_t r, const WorkerInfo& w, Message&& m) {
      const auto step = static_cast<int64_t>(m.step);
      FEDRA_REQUIRE(step >= first && step < end, "{} sent '{}' for step {}, outside this round's steps {}..{}",
                    w.name, m.kind, step, first, end - 1);
      if (m.kind == kBatch) {
        FEDRA_REQUIRE(r == 0, "{} (rank {}) sent a batch; only rank 0 draws batches", w.name, r);
        const at::Tensor& x = m.tensor("x");
        const at::Tensor& y = m.tensor("y");
        FEDRA_REQUIRE(x.dim() >= 1 && y.dim() >= 1 && x.size(0) == y.size(0),
                      "{} sent a batch of {} inputs and {} targets", w.name, describe_tensor(x), describe_tensor(y));
        check_finite(m.tensors);
        for (size_t k = 1; k < world; ++k) cohort.post(ranked[k].id, m);
        return;
      }
      FEDRA_REQUIRE(m.kind == kReduce || m.kind == kGather, "unexpected '{}' from {} during a tensor round",
                    m.kind, w.name);
      const auto op = static_cast<int64_t>(m.metric("op"));
      const at::Tensor& t = m.tensor("t");
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
      Message res(kResult);
      res.step = m.step;
      res.metrics["op"] = static_cast<double>(op);
      res.tensors.emplace_back("t", result);
      for (size_t k = 0; k < world; ++k) cohort.post(ranked[k].id, res);
      pending.erase({step, op});
    };
    const std::vector<Message> done =
        exchange(cohort, round, ranked, std::move(instructions), kDone, on_part,
                 "every worker holds a slice of every layer, so the round cannot go on without it");

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
    Metrics line = loss_metrics(ctx, round, first, count, done[0], ranked[0].name);
    line.emplace_back("worker_compute_ms", done[0].metric_or("compute_ms", 0));
    line.emplace_back("worker_wait_ms", done[0].metric_or("wait_ms", 0));
    return line;
  }

  TensorOptions o_;
  ShardPlan shards_;
};

// ---------------------------------------------------------------------------------------------
// Worker

class TensorWorker : public WorkerStrategy {
 public:
  explicit TensorWorker(const Job& job) : job_(job), o_(parse_options<TensorOptions>(job.options)) {
    check_loss_name(job.loss);
    plan_ = plan_shards(build_model(job.model, job.seed), o_.workers());
  }

  Message handle(const Message& request, WorkerContext& ctx) override {
    FEDRA_REQUIRE(request.kind == kRun, "tensor worker cannot handle '{}'", request.kind);
    FEDRA_REQUIRE(ctx.link != nullptr, "tensor needs the worker link");
    link_ = ctx.link;
    const OptionMap opts(kRun, request.options);
    rank_ = opts.get_int("rank", 0);
    FEDRA_REQUIRE(opts.get_int("world", 0) == plan_.world && rank_ >= 0 && rank_ < plan_.world,
                  "tensor: rank {} of {} does not fit tensor.workers = {}", rank_, opts.get_int("world", 0), plan_.world);
    if (rank_ == 0) {
      FEDRA_REQUIRE(ctx.data != nullptr && ctx.data->size() > 0, "worker {} (rank 0) has no training data", ctx.name);
      if (!batches_) batches_.emplace(o_.batches(), o_.batch_size(), job_.seed, ctx.name, 0);
    }
    load(request);
    const int64_t first = static_cast<int64_t>(request.step);
    const int64_t count = opts.get_int("steps", 0);
    timeout_ = std::chrono::milliseconds(static_cast<int64_t>(o_.step_timeout() * 1000));
    stash_.clear();
    compute_s_ = wait_s_ = 0;

    at::Tensor losses = at::zeros({count}, at::kDouble);
    at::Tensor examples = at::zeros({count}, at::kLong);
    for (int64_t i = 0; i < count; ++i) {
      try {
        const auto [loss, n] = step(first + i, ctx);
        losses[i] = loss;
        examples[i] = n;
      } catch (const c10::Error& e) {
        FEDRA_FAIL("tensor rank {}, step {}: {}", rank_, first + i, e.what_without_backtrace());
      }
    }
    Message done(kDone, request.round);
    for (size_t i = 0; i < names_.size(); ++i) done.tensors.emplace_back(names_[i], params_[i].detach());
    for (auto& [name, t] : optimizer_->state()) done.tensors.emplace_back("opt/" + name, t);
    if (rank_ == 0) {
      done.tensors.emplace_back("loss", losses);
      done.tensors.emplace_back("examples", examples);
    }
    done.metrics["compute_ms"] = count > 0 ? 1000 * compute_s_ / static_cast<double>(count) : 0;
    done.metrics["wait_ms"] = count > 0 ? 1000 * wait_s_ / static_cast<double>(count) : 0;
    return done;
  }

 private:
  void load(const Message& request) {
    NamedTensors shard, opt;
    for (const auto& [name, t] : request.tensors) {
      if (name.rfind("opt/", 0) == 0) opt.emplace_back(name.substr(4), t);
      else shard.emplace_back(name, t);
    }
    check_layout(shard_layout(plan_, rank_), shard);
    names_.clear();
    params_.clear();
    weight_.assign(plan_.layers.size(), at::Tensor());
    bias_.assign(plan_.layers.size(), at::Tensor());
    for (const auto& [name, t] : shard) {
      names_.push_back(name);
      params_.push_back(t.clone().requires_grad_());
      const auto dot = name.rfind('.');
      const auto it = std::find(plan_.layers.begin(), plan_.layers.end(), name.substr(0, dot));
      const auto l = static_cast<size_t>(it - plan_.layers.begin());
      (name.substr(dot + 1) == "weight" ? weight_ : bias_)[l] = params_.back();
    }
    std::vector<at::Tensor> views;
    for (const auto& p : params_) views.push_back(p.detach());
    optimizer_.emplace(OptimizerConfig::from(o_), names_, views);
    if (!opt.empty()) optimizer_->load_state(opt);
  }

  // The coordinator's next message of `kind` for (step, op); others that arrive first wait.
  Message await(const char* kind, int64_t step, int64_t op) {
    const auto t0 = Clock::now();
    auto matches = [&](const Message& m) {
      return m.kind == kind && static_cast<int64_t>(m.step) == step &&
             (op < 0 || static_cast<int64_t>(m.metric_or("op", -1)) == op);
    };
    for (auto it = stash_.begin(); it != stash_.end(); ++it) {
      if (matches(*it)) {
        Message m = std::move(*it);
        stash_.erase(it);
        return m;
      }
    }
    for (;;) {
      Message m = link_->receive(timeout_);
      if (matches(m)) {
        wait_s_ += Seconds(Clock::now() - t0).count();
        return m;
      }
      FEDRA_REQUIRE((m.kind == kBatch || m.kind == kResult) && stash_.size() < 16,
                    "tensor worker: expected '{}' for step {}, got '{}' for step {}", kind, step, m.kind, m.step);
      stash_.push_back(std::move(m));
    }
  }

  at::Tensor collective(const char* kind, int64_t step, const at::Tensor& t) {
    Message m(kind);
    m.step = static_cast<uint64_t>(step);
    m.metrics["op"] = static_cast<double>(op_);
    m.tensors.emplace_back("t", t.detach().contiguous());
    link_->send(m);
    Message res = await(kResult, step, op_++);
    const at::Tensor& out = res.tensor("t");
    // A sum has the part's shape; a gather the whole last layer's width.
    const int64_t width = kind == std::string(kGather) ? plan_.out.back() : t.size(1);
    FEDRA_REQUIRE(out.dim() == 2 && out.size(0) == t.size(0) && out.size(1) == width &&
                      out.scalar_type() == at::kFloat,
                  "tensor worker: the result of step {} is {}; the part sent was {}, the result should have {} "
                  "columns", step, describe_tensor(out), describe_tensor(t), width);
    return out;
  }

  std::pair<double, int64_t> step(int64_t s, const WorkerContext& ctx) {
    const auto t0 = Clock::now();
    const double wait_before = wait_s_;
    at::Tensor x, y;
    if (rank_ == 0) {
      auto [bx, by] = batches_->batch(*ctx.data, s);
      x = bx.contiguous();
      y = by.contiguous();
      if (plan_.world > 1) {
        Message m(kBatch);
        m.step = static_cast<uint64_t>(s);
        m.tensors = {{"x", x}, {"y", y}};
        link_->send(m);
      }
    } else {
      Message m = await(kBatch, s, -1);
      x = m.tensor("x");
      y = m.tensor("y");
    }
    x = x.flatten(1);
    FEDRA_REQUIRE(x.size(1) == plan_.in[0] && x.scalar_type() == at::kFloat,
                  "tensor: the batch is {}, the model's first layer takes {} features", describe_tensor(x), plan_.in[0]);
    for (auto& p : params_) p.mutable_grad() = at::Tensor();
    op_ = 0;

    struct Segment {
      at::Tensor input, output;
      bool gather = false;
    };
    std::vector<Segment> segments;
    const size_t layers = plan_.layers.size();
    at::Tensor a = x, logits;
    for (size_t l = 0; l < layers; l += 2) {
      Segment seg;
      at::Tensor h = a;
      if (l > 0) {
        seg.input = a.detach().requires_grad_();
        h = at::relu(seg.input);
      }
      const at::Tensor z = at::linear(h, weight_[l], bias_[l]);
      if (l + 1 == layers) {
        seg.output = z;
        seg.gather = true;
        logits = collective(kGather, s, z);
      } else {
        seg.output = at::linear(at::relu(z), weight_[l + 1], bias_[l + 1]);
        const at::Tensor sum = collective(kReduce, s, seg.output);
        (l + 2 == layers ? logits : a) = sum;
      }
      segments.push_back(seg);
    }
    at::Tensor out = logits.detach().requires_grad_();
    at::Tensor loss = compute_loss(out, y, job_.loss);
    loss.backward();
    at::Tensor g = out.grad();
    for (size_t k = segments.size(); k-- > 0;) {
      const Segment& seg = segments[k];
      at::Tensor go = g;
      if (seg.gather) {
        const auto [b, e] = plan_.ranges[layers - 1][static_cast<size_t>(rank_)];
        go = g.narrow(1, b, e - b);
      }
      torch::autograd::backward({seg.output}, {go});
      if (k > 0) g = collective(kReduce, s, seg.input.grad());
    }
    {
      torch::NoGradGuard no_grad;
      for (size_t i = 0; i < params_.size(); ++i) {
        const at::Tensor& grad = params_[i].grad();
        optimizer_->step(i, grad.defined() ? grad : at::zeros_like(params_[i]));
      }
    }
    compute_s_ += Seconds(Clock::now() - t0).count() - (wait_s_ - wait_before);
    const int64_t n = x.size(0);
    return {n > 0 ? loss.item<double>() : 0.0, n};
  }

  Job job_;
  TensorOptions o_;
  ShardPlan plan_;
  WorkerLink* link_ = nullptr;
  int64_t rank_ = 0;
  std::optional<BatchOrder> batches_;
  std::vector<std::string> names_;
  std::vector<at::Tensor> params_;         // this rank's slices, autograd leaves
  std::vector<at::Tensor> weight_, bias_;  // per layer (bias undefined where this rank has none)
  std::optional<ParamOptimizer> optimizer_;
  std::deque<Message> stash_;
  std::chrono::milliseconds timeout_{60000};
  int64_t op_ = 0;
  double compute_s_ = 0, wait_s_ = 0;
};

}  // namespace

void TensorOptions::validate() const {
  FEDRA_REQUIRE(workers_ >= 1, "tensor.workers must be >= 1, got {}", workers_);
  FEDRA_REQUIRE(steps_ >= 0, "tensor.steps must be >= 0, got {}", steps_);
  FEDRA_REQUIRE(steps_ > 0 || epochs_ >= 1, "tensor needs steps > 0 or epochs >= 1");
  FEDRA_REQUIRE(steps_per_round_ >= 0, "tensor.steps_per_round must be >= 0 (0: one round per epoch), got {}",
                steps_per_round_);
  FEDRA_REQUIRE(batch_size_ >= 1, "tensor.batch_size must be >= 1, got {}", batch_size_);
  OptimizerConfig::from(*this).validate();
  check_batches_mode(batches_, "tensor.batches");
  FEDRA_REQUIRE(step_timeout_ > 0, "tensor.step_timeout must be > 0 seconds, got {}", step_timeout_);
  FEDRA_REQUIRE(eval_every_ >= 0, "tensor.eval_every must be >= 0, got {}", eval_every_);
  check_initial_model_options(init_, init_skip_, "tensor.");
}

ShardPlan plan_shards(const torch::nn::Sequential& model, int64_t world) {
  FEDRA_REQUIRE(world >= 1, "tensor parallelism needs at least one worker, got {}", world);
  ShardPlan plan;
  plan.world = world;
  for (const auto& child : model->named_children()) {
    if (auto linear = child.value()->as<torch::nn::Linear>()) {
      plan.layers.push_back(child.key());
      plan.in.push_back(linear->options.in_features());
      plan.out.push_back(linear->options.out_features());
      FEDRA_REQUIRE(linear->options.bias(), "tensor: layer {} has no bias; the split expects one", child.key());
    } else {
      const bool relu = child.value()->as<torch::nn::ReLU>() != nullptr;
      const bool flatten = child.value()->as<torch::nn::Flatten>() != nullptr;
      FEDRA_REQUIRE((relu && !plan.layers.empty()) || (flatten && plan.layers.empty()),
                    "tensor parallelism splits MLPs (mlp:IN-H1-...-OUT: Linear layers with ReLU between); "
                    "this model has '{}' where it cannot split", child.key());
    }
  }
  FEDRA_REQUIRE(!plan.layers.empty(), "tensor: the model has no Linear layers to split");
  for (size_t l = 0; l < plan.layers.size(); ++l) {
    // Column layers split their outputs; a row layer splits its inputs the same way.
    const int64_t dim = plan.column(l) ? plan.out[l] : plan.in[l];
    FEDRA_REQUIRE(dim >= world, "tensor: layer {} ({}-{}) splits its {} {} ways, but it has only {}", plan.layers[l],
                  plan.in[l], plan.out[l], plan.column(l) ? "outputs" : "inputs", world, dim);
    std::vector<std::pair<int64_t, int64_t>> ranges;
    for (int64_t r = 0; r < world; ++r) ranges.push_back(even_range(dim, world, r));
    plan.ranges.push_back(std::move(ranges));
  }
  return plan;
}

NamedTensors shard_of(const ShardPlan& plan, const NamedTensors& full, int64_t rank) {
  auto find = [&](const std::string& name) -> const at::Tensor& {
    for (const auto& [n, t] : full) {
      if (n == name) return t;
    }
    FEDRA_FAIL("tensor: the model has no parameter '{}'", name);
  };
  NamedTensors out;
  for (size_t l = 0; l < plan.layers.size(); ++l) {
    const auto [b, e] = plan.ranges[l][static_cast<size_t>(rank)];
    const at::Tensor& w = find(plan.layers[l] + ".weight");
    const at::Tensor& bias = find(plan.layers[l] + ".bias");
    if (plan.column(l)) {
      out.emplace_back(plan.layers[l] + ".weight", w.narrow(0, b, e - b).contiguous());
      out.emplace_back(plan.layers[l] + ".bias", bias.narrow(0, b, e - b).contiguous());
    } else {
      out.emplace_back(plan.layers[l] + ".weight", w.narrow(1, b, e - b).contiguous());
      if (rank == 0) out.emplace_back(plan.layers[l] + ".bias", bias.contiguous());
    }
  }
  return out;
}

NamedTensors assemble(const ShardPlan& plan, const std::vector<NamedTensors>& shards) {
  FEDRA_REQUIRE(static_cast<int64_t>(shards.size()) == plan.world, "tensor: {} shards for {} workers", shards.size(),
                plan.world);
  auto find = [&](size_t rank, const std::string& name) -> const at::Tensor& {
    for (const auto& [n, t] : shards[rank]) {
      if (n == name) return t;
    }
    FEDRA_FAIL("tensor: rank {}'s slices lack '{}'", rank, name);
  };
  NamedTensors out;
  for (size_t l = 0; l < plan.layers.size(); ++l) {
    std::vector<at::Tensor> ws, bs;
    for (size_t r = 0; r < shards.size(); ++r) {
      ws.push_back(find(r, plan.layers[l] + ".weight"));
      if (plan.column(l)) bs.push_back(find(r, plan.layers[l] + ".bias"));
    }
    out.emplace_back(plan.layers[l] + ".weight", at::cat(ws, plan.column(l) ? 0 : 1));
    out.emplace_back(plan.layers[l] + ".bias", plan.column(l) ? at::cat(bs, 0) : find(0, plan.layers[l] + ".bias"));
  }
  return out;
}

StrategyInfo tensor_strategy() {
  StrategyInfo info;
  info.name = "tensor";
  info.description = "Tensor parallelism: every worker holds a slice of every layer; partial sums exchanged";
  info.options = option_specs<TensorOptions>();
  info.make_coordinator = [](const Job& job) { return std::make_unique<TensorCoordinator>(job); };
  info.make_worker = [](const Job& job) { return std::make_unique<TensorWorker>(job); };
  return info;
}

}  // namespace fedra::tensor
