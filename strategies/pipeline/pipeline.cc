#include "strategies/pipeline/internal.h"

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

#include "core/data/batching.h"
#include "core/data/tensor_checks.h"
#include "core/loops/cohort.h"
#include "core/model/model.h"
#include "core/training/optimizer.h"
#include "core/training/training.h"
#include "strategies/model_parallel.h"

namespace fedra::pipeline {


NamedTensors parameters_of(const torch::nn::Sequential& stage) {
  NamedTensors out;
  for (const auto& p : stage->named_parameters()) out.emplace_back(p.key(), p.value().detach());
  for (const auto& b : stage->named_buffers()) out.emplace_back(b.key(), b.value());
  return out;
}

std::string describe_stages(const std::vector<torch::nn::Sequential>& stages) {
  std::vector<std::string> parts;
  for (const auto& stage : stages) {
    parts.push_back(fmt::format("[{}] ({} weights)", fmt::join(layer_names(stage), " "), count_parameters(*stage)));
  }
  return fmt::format("{}", fmt::join(parts, " | "));
}


void PipelineOptions::validate() const {
  FEDRA_REQUIRE(stages_ >= 1, "pipeline.stages must be >= 1, got {}", stages_);
  FEDRA_REQUIRE(in_flight_ >= 0, "pipeline.in_flight must be >= 0 (0: the number of stages), got {}", in_flight_);
}

void PipelineTesting::validate(const std::string& scope) const {
  FEDRA_REQUIRE(inject_bad_shape_ >= -1, "{}.testing.inject_bad_shape must be a step or -1, got {}", scope,
                inject_bad_shape_);
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

Message StageTensor::encode(const char* kind) const {
  Message m(kind);
  m.step = step;
  const bool act = std::string(kind) == kAct;
  m.tensors.emplace_back(act ? "act" : "grad", t);
  if (act) m.tensors.emplace_back("target", target);
  return m;
}

StageTensor StageTensor::decode(const Message& m, const char* kind) {
  m.expect_kind(kind, m.sender.empty() ? std::string("a stage") : m.sender);
  const bool act = std::string(kind) == kAct;
  return {m.step, m.tensor(act ? "act" : "grad"), act ? m.tensor("target") : at::Tensor()};
}

StrategyInfo pipeline_strategy() {
  return make_strategy<PipelineOptions>("pipeline", "Pipeline parallelism: stages on workers, micro-batches in flight, 1F1B",
                                        &new_coordinator, &new_worker);
}

}  // namespace fedra::pipeline
