#include "tests/testing.h"

#include <torch/torch.h>

#include "core/model/model.h"
#include "core/training/training.h"

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
    o.optim.name = optimizer;
    o.optim.lr = std::string(optimizer) == "adam" ? 0.01 : 0.1;
    o.optim.momentum = 0.9;
    const TrainStats s = train_local(model, d, o);
    const EvalStats after = evaluate_model(model, d, "ce");
    CHECK(s.steps == 5 * 16);
    CHECK(after.loss < before * 0.5);
    CHECK(after.accuracy > 0.9);
    o.max_steps = 3;
    CHECK(train_local(model, d, o).steps == 3);
  }
}

TEST_CASE("model specs carry a cut for split learning; other uses see the same network") {
  const ModelSpec s = parse_model_spec("cnn:classes=7,cut=pool1,head=fc2");
  CHECK(s.network == "cnn:classes=7");
  CHECK(s.cut == "pool1");
  CHECK(s.head == "fc2");
  CHECK(parse_model_spec("mlp:784-256-10,cut=relu1").network == "mlp:784-256-10");
  CHECK(parse_model_spec("lenet5").network == "lenet5");
  // build_model ignores the cut: same parameters, same values.
  auto a = build_model("mlp:8-4-2,cut=relu1", 3);
  auto b = build_model("mlp:8-4-2", 3);
  CHECK(torch::equal(a->named_parameters()["fc1.weight"], b->named_parameters()["fc1.weight"]));
  CHECK_THROWS_WITH_AS(parse_model_spec("cnn:cut="), doctest::Contains("cut= needs a layer name"), Error);
}

TEST_CASE("split_model cuts the seeded network into parts that share its modules") {
  SplitModel m = split_model("cnn:cut=pool1", 5, false);
  CHECK(layer_names(m.bottom) == std::vector<std::string>{"conv1", "relu1", "pool1"});
  CHECK(layer_names(m.top).front() == "conv2");
  CHECK(!m.head);
  CHECK(count_parameters(*m.bottom) + count_parameters(*m.top) == 1663370);
  // Same initial weights as the whole network built from the seed.
  auto whole = build_model("cnn", 5);
  CHECK(torch::equal(m.bottom->named_parameters()["conv1.weight"], whole->named_parameters()["conv1.weight"]));
  CHECK(torch::equal(m.top->named_parameters()["fc2.bias"], whole->named_parameters()["fc2.bias"]));
  // The parts compose to the whole.
  const at::Tensor x = torch::randn({2, 1, 28, 28});
  CHECK(torch::allclose(m.top->forward(m.bottom->forward(x)), whole->forward(x)));

  const SplitModel u = split_model("cnn:cut=pool1", 5, true);  // U-shaped: default head = fc2
  CHECK(layer_names(u.head) == std::vector<std::string>{"fc2"});
  CHECK(layer_names(u.top).back() == "relu3");
  CHECK(layer_names(split_model("lenet5:cut=pool2,head=fc2", 1, true).head) ==
        std::vector<std::string>{"fc2", "relu4", "fc3"});

  CHECK_THROWS_WITH_AS(split_model("cnn", 1, false), doctest::Contains("needs a cut in the model spec, e.g. 'cnn:cut=relu1'"),
                       Error);
  // The hint is a spec that works: after mlp's widths the cut follows a comma.
  CHECK_THROWS_WITH_AS(split_model("mlp:784-32-10", 1, false),
                       doctest::Contains("e.g. 'mlp:784-32-10,cut=relu1'"), Error);
  CHECK_NOTHROW(split_model("mlp:784-32-10,cut=relu1", 1, false));
  CHECK_THROWS_WITH_AS(split_model("cnn:cut=fc9", 1, false),
                       doctest::Contains("no layer 'fc9' for cut=; its layers are conv1, relu1, pool1"), Error);
  CHECK_THROWS_WITH_AS(split_model("cnn:cut=fc2", 1, false), doctest::Contains("nothing is left above the cut"),
                       Error);
  CHECK_THROWS_WITH_AS(split_model("cnn:cut=relu3", 1, true), doctest::Contains("nothing is left above the cut"),
                       Error);
  CHECK_THROWS_WITH_AS(split_model("cnn:cut=pool1,head=fc2", 1, false), doctest::Contains("only the U-shaped"),
                       Error);
}

TEST_CASE("regression and multi-label losses: PyTorch's values, the right shapes, scores that fit the task") {
  const at::Tensor out = torch::tensor({{1.0f}, {2.0f}, {4.0f}});
  const at::Tensor y = torch::tensor({1.5f, 2.0f, 2.0f});  // [N] targets for a one-output model
  // MSELoss and L1Loss: the mean over every value.
  CHECK(compute_loss(out, y, "mse").item<double>() == doctest::Approx((0.25 + 0 + 4) / 3));
  CHECK(compute_loss(out, y, "l1").item<double>() == doctest::Approx((0.5 + 0 + 2) / 3));
  // A loss that does not fit the targets says which would.
  CHECK_THROWS_WITH(compute_loss(out, torch::tensor({1L, 0L, 1L}), "mse"),
                    doctest::Contains("loss mse needs real-valued targets, and the data has class labels"));
  CHECK_THROWS_WITH(compute_loss(torch::zeros({3, 4}), y, "ce"),
                    doctest::Contains("use --loss mse or l1 for regression"));
  CHECK_THROWS_WITH(compute_loss(torch::zeros({3, 2}), y, "mse"),
                    doctest::Contains("the model gives float32[3,2] for targets float32[3]"));
  // Multi-label BCE: BCEWithLogitsLoss over [N, K] 0/1 targets.
  const at::Tensor logits = torch::tensor({{2.0f, -1.0f}, {0.5f, 3.0f}});
  const at::Tensor labels = torch::tensor({{1.0f, 0.0f}, {0.0f, 1.0f}});
  const double want = (std::log1p(std::exp(-2.0)) + std::log1p(std::exp(-1.0)) + std::log1p(std::exp(0.5)) +
                       std::log1p(std::exp(-3.0))) / 4;
  CHECK(compute_loss(logits, labels, "bce").item<double>() == doctest::Approx(want));

  // Evaluation: MAE and RMSE over every value for regression, no accuracy.
  Dataset reg;
  reg.inputs = torch::tensor({{1.0f}, {2.0f}, {3.0f}, {4.0f}});
  reg.targets = torch::tensor({1.0f, 2.0f, 3.0f, 6.0f});
  torch::nn::Sequential identity{torch::nn::Identity()};
  const EvalStats r = evaluate_model(identity, reg, "mse", 3);  // two batches
  CHECK(r.regression);
  CHECK(r.mae == doctest::Approx(0.5));         // errors 0, 0, 0, 2
  CHECK(r.rmse == doctest::Approx(1.0));        // sqrt(4 / 4)
  CHECK(r.loss == doctest::Approx(1.0));        // the mean squared error
  const auto scores = eval_metrics(r);
  REQUIRE(scores.size() == 3);
  CHECK(scores[0].first == "test_mae");
  CHECK(scores[1].first == "test_rmse");
  // Multi-label: an example counts as right when every one of its labels is.
  Dataset ml;
  ml.inputs = torch::tensor({{2.0f, -1.0f}, {0.5f, 3.0f}, {-1.0f, -1.0f}});
  ml.targets = torch::tensor({{1.0f, 0.0f}, {0.0f, 1.0f}, {0.0f, 0.0f}});
  const EvalStats m = evaluate_model(identity, ml, "bce");
  CHECK(m.correct == 2);  // the second example's first label is wrong
  CHECK(eval_metrics(m)[0].first == "test_accuracy");
}
