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

namespace fedra::tensor {


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


void TensorOptions::validate() const {
  FEDRA_REQUIRE(workers_ >= 1, "tensor.workers must be >= 1, got {}", workers_);
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

Message TensorBatch::encode() const {
  Message m(kBatch);
  m.step = step;
  m.tensors = {{"x", x}, {"y", y}};
  return m;
}

TensorBatch TensorBatch::decode(const Message& m, const std::string& who) {
  m.expect_kind(kBatch, who);
  TensorBatch b{m.step, m.tensor("x"), m.tensor("y")};
  FEDRA_REQUIRE(b.x.dim() >= 1 && b.y.dim() >= 1 && b.x.size(0) == b.y.size(0), "{} sent a batch of {} inputs and {} targets",
                who, describe_tensor(b.x), describe_tensor(b.y));
  return b;
}

Message CollectivePart::encode(const char* kind) const {
  Message m(kind);
  m.step = step;
  m.metrics["op"] = static_cast<double>(op);
  if (origin >= 0) m.metrics["origin"] = static_cast<double>(origin);
  m.tensors.emplace_back("t", t);
  return m;
}

CollectivePart CollectivePart::decode(const Message& m) {
  return {m.step, static_cast<int64_t>(m.metric("op")), static_cast<int64_t>(m.metric_or("origin", -1)), m.tensor("t")};
}

StrategyInfo tensor_strategy() {
  return make_strategy<TensorOptions>("tensor", "Tensor parallelism: every worker holds a slice of every layer; partial sums exchanged",
                                      &new_coordinator, &new_worker);
}

}  // namespace fedra::tensor
