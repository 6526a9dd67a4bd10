#include "tests/testing.h"

#include <torch/torch.h>

#include "core/model.h"
#include "core/training.h"

using namespace fedra;

TEST_CASE("model specs build the published architectures (weight counts from the papers)") {
  CHECK(count_parameters(*build_model("mlp:784-200-200-10", 1)) == 199210);  // McMahan's 2NN
  CHECK(count_parameters(*build_model("cnn", 1)) == 1663370);               // McMahan's CNN
  CHECK(count_parameters(*build_model("lenet5", 1)) == 61706);
  auto cnn = build_model("cnn", 1);
  CHECK(cnn->forward(torch::zeros({2, 1, 28, 28})).sizes() == torch::IntArrayRef({2, 10}));
  auto mlp = build_model("mlp:784-200-200-10", 1);
  CHECK(mlp->forward(torch::zeros({2, 1, 28, 28})).sizes() == torch::IntArrayRef({2, 10}));
}

TEST_CASE("the same spec and seed build the same weights in any process") {
  const NamedTensors a = model_state(*build_model("lenet5", 7));
  const NamedTensors b = model_state(*build_model("lenet5", 7));
  const NamedTensors c = model_state(*build_model("lenet5", 8));
  REQUIRE(a.size() == b.size());
  bool all_equal = true, any_differs = false;
  for (size_t i = 0; i < a.size(); ++i) {
    CHECK(a[i].first == b[i].first);
    all_equal &= torch::equal(a[i].second, b[i].second);
    any_differs |= !torch::equal(a[i].second, c[i].second);
  }
  CHECK(all_equal);
  CHECK(any_differs);
  CHECK(a.front().first == "conv1.weight");
}

TEST_CASE("loading a state checks names and shapes and names the mismatch") {
  auto model = build_model("mlp:4-3-2", 1);
  NamedTensors state = model_state(*build_model("mlp:4-3-2", 2));
  load_model_state(*model, state);
  CHECK(torch::equal(model->named_parameters()["fc1.weight"], state[0].second));
  NamedTensors wrong = model_state(*build_model("mlp:4-5-2", 2));
  CHECK_THROWS_WITH_AS(load_model_state(*model, wrong),
                       "tensor 'fc1.weight' is float32[5,4] but the model has float32[3,4]", fedra::Error);
  CHECK_THROWS_WITH_AS(build_model("mlp:784-x-10", 1), doctest::Contains("'x' is not a positive layer width"),
                       fedra::Error);
  CHECK_THROWS_WITH_AS(build_model("resnet", 1), doctest::Contains("unknown model 'resnet'"), fedra::Error);
}

TEST_CASE("local training lowers the loss on a learnable task, with SGD and with Adam") {
  // Class = sign of the first feature: an MLP learns it in a few epochs.
  torch::manual_seed(3);
  Dataset d;
  d.inputs = torch::randn({512, 8});
  d.targets = (d.inputs.select(1, 0) > 0).to(torch::kLong);
  d.num_classes = 2;
  for (const char* optimizer : {"sgd", "adam"}) {
    CAPTURE(optimizer);
    auto model = build_model("mlp:8-16-2", 1);
    const double before = evaluate_model(model, d, "ce").loss;
    TrainOptions o;
    o.epochs = 5;
    o.optimizer = optimizer;
    o.lr = std::string(optimizer) == "adam" ? 0.01 : 0.1;
    o.momentum = 0.9;
    const TrainStats s = train_local(model, d, o);
    const EvalStats after = evaluate_model(model, d, "ce");
    CHECK(s.steps == 5 * 16);
    CHECK(after.loss < before * 0.5);
    CHECK(after.accuracy > 0.9);
    o.max_steps = 3;
    CHECK(train_local(model, d, o).steps == 3);
  }
}
