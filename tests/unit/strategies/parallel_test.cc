// tensor and pipeline: the shard plan, the stage cuts, the schedule, the notebook's draws.
#include "tests/testing.h"

#include <torch/torch.h>

#include "core/data/batching.h"
#include "core/model/model.h"
#include "strategies/pipeline/pipeline.h"
#include "strategies/tensor/tensor.h"

using namespace fedra;

TEST_CASE("tensor: slices cover every weight once and assemble back to the model") {
  const auto model = build_model("mlp:20-10-12-6", 3);
  const tensor::ShardPlan plan = tensor::plan_shards(model, 4);
  CHECK(plan.layers == std::vector<std::string>{"fc1", "fc2", "fc3"});
  // fc1's 10 rows as 3, 3, 2, 2; fc2 splits its 10 inputs the same way; fc3's 6 rows 2, 2, 1, 1.
  CHECK(plan.ranges[0] == std::vector<std::pair<int64_t, int64_t>>{{0, 3}, {3, 6}, {6, 8}, {8, 10}});
  CHECK(plan.ranges[1] == plan.ranges[0]);
  CHECK(plan.ranges[2] == std::vector<std::pair<int64_t, int64_t>>{{0, 2}, {2, 4}, {4, 5}, {5, 6}});
  const NamedTensors full = model_state(*model);
  std::vector<NamedTensors> shards;
  int64_t weights = 0;
  for (int64_t r = 0; r < 4; ++r) {
    shards.push_back(tensor::shard_of(plan, full, r));
    for (const auto& [name, t] : shards.back()) weights += t.numel();
  }
  CHECK(shards[0].size() == 6);  // fc2's bias lives on rank 0 only
  CHECK(shards[1].size() == 5);
  CHECK(weights == count_parameters(*model));
  const NamedTensors back = tensor::assemble(plan, shards);
  REQUIRE(back.size() == full.size());
  for (size_t i = 0; i < full.size(); ++i) {
    CHECK(back[i].first == full[i].first);
    CHECK(torch::equal(back[i].second, full[i].second));
  }
  CHECK_THROWS_WITH(tensor::plan_shards(build_model("cnn", 1), 2),
                    doctest::Contains("tensor parallelism splits MLPs"));
}

TEST_CASE("pipeline: stages are cut where asked, or balanced by weights") {
  const auto mlp = build_model("mlp:784-200-200-10", 1);
  auto names = [](const std::vector<torch::nn::Sequential>& stages) {
    std::vector<std::vector<std::string>> out;
    for (const auto& s : stages) out.push_back(layer_names(s));
    return out;
  };
  using Names = std::vector<std::vector<std::string>>;
  CHECK(names(pipeline::cut_stages(mlp, 2, "")) == Names{{"flatten", "fc1", "relu1"}, {"fc2", "relu2", "fc3"}});
  CHECK(names(pipeline::cut_stages(mlp, 3, "")) == Names{{"flatten", "fc1", "relu1"}, {"fc2", "relu2"}, {"fc3"}});
  CHECK(names(pipeline::cut_stages(mlp, 2, "relu2")) == Names{{"flatten", "fc1", "relu1", "fc2", "relu2"}, {"fc3"}});
  // The stages share the model's modules: their parameters are the model's, by the same names.
  const auto stages = pipeline::cut_stages(mlp, 2, "");
  CHECK(stages[1]->named_parameters()["fc3.weight"].data_ptr() == mlp->named_parameters()["fc3.weight"].data_ptr());
  CHECK(names(pipeline::cut_stages(build_model("cnn", 1), 2, "")).at(1).front() == "fc1");
  CHECK_THROWS_WITH(pipeline::cut_stages(mlp, 3, "relu1"), doctest::Contains("names 1 layer(s); 3 stages need 2"));
  CHECK_THROWS_WITH(pipeline::cut_stages(mlp, 2, "fc3"), doctest::Contains("leaves an empty stage"));
}

TEST_CASE("pipeline: the 1F1B warm-up") {
  // The notebook: 2 stages, 3 in flight -> stage 0 runs F0 F1 F2 before B0; stage 1 F0 B0.
  CHECK(pipeline::warmup_forwards(0, 2, 3) == 3);
  CHECK(pipeline::warmup_forwards(1, 2, 3) == 1);
  // PipeDream (in_flight = stages): N - s; sequential: 1 everywhere.
  CHECK(pipeline::warmup_forwards(0, 4, 4) == 4);
  CHECK(pipeline::warmup_forwards(2, 4, 4) == 2);
  CHECK(pipeline::warmup_forwards(3, 4, 4) == 1);
  for (int64_t s = 0; s < 4; ++s) CHECK(pipeline::warmup_forwards(s, 4, 1) == 1);
}

TEST_CASE("the notebook's pipeline slicing and its throwaway draws") {
  // x[288:-1] when the end wraps: 31 rows, not the empty slice of the other cells.
  CHECK(batch_rows("notebook-pipeline", 9, 0, 32, 320) == std::pair<int64_t, int64_t>{288, 319});
  CHECK(batch_rows("notebook", 9, 0, 32, 320) == std::pair<int64_t, int64_t>{288, 288});
  CHECK(batch_rows("notebook-pipeline", 10, 0, 32, 320) == std::pair<int64_t, int64_t>{0, 32});
  const std::string data = "synthetic:n=320,features=16,classes=2,seed=40";
  // "2" and "mlp:16-8-1*2" discard the same draws; a Linear without bias draws fewer than one with.
  const auto a = build_initial_model("mlp:16-8-1", 0, "after-data", "2", data);
  const auto b = build_initial_model("mlp:16-8-1", 0, "after-data", "mlp:16-8-1*2", data);
  const auto c = build_initial_model("mlp:16-8-1", 0, "after-data", "mlp:16-8-1 linear:16-8 linear:8-1", data);
  const auto d = build_initial_model("mlp:16-8-1", 0, "after-data", "mlp:16-8-1 linear:16-8 linear:8-1:nobias", data);
  CHECK(torch::equal(model_state(*a)[0].second, model_state(*b)[0].second));
  CHECK(torch::equal(model_state(*a)[0].second, model_state(*c)[0].second));  // an MLP is its Linear layers
  CHECK(!torch::equal(model_state(*a)[0].second, model_state(*d)[0].second));
  CHECK_THROWS_WITH(check_initial_model_options("after-data", "linear:16", "pipeline."),
                    doctest::Contains("pipeline.init_skip: 'linear:16' should be linear:IN-OUT"));
  CHECK_THROWS_WITH(check_initial_model_options("seed", "2", "tensor."),
                    doctest::Contains("tensor.init_skip only applies with init=after-data"));
}
