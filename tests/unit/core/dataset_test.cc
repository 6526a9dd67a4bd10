#include "tests/testing.h"

#include <fstream>

#include <torch/torch.h>

#include "core/data/dataset.h"
#include "tests/reference/notebook_data.h"
#include "tests/test_util.h"

using namespace fedra;
using fedra::test::TempDir;

TEST_CASE("Fashion-MNIST loads from Debian's package: 60,000 + 10,000 28x28 images, 10 classes") {
  const DatasetSplits d = load_dataset("fmnist");
  CHECK(d.train.size() == 60000);
  CHECK(d.test.size() == 10000);
  CHECK(d.train.inputs.sizes() == torch::IntArrayRef({60000, 1, 28, 28}));
  CHECK(d.train.num_classes == 10);
  CHECK(label_histogram(d.train) == std::vector<int64_t>(10, 6000));
  // Standardised with the training set's statistics.
  CHECK(d.train.inputs.mean().item<double>() == doctest::Approx(0.0).epsilon(0.01));
  CHECK(d.train.inputs.std().item<double>() == doctest::Approx(1.0).epsilon(0.01));
}

TEST_CASE("a process reads only the split it asks for") {
  const DatasetSplits test_only = load_dataset("fmnist", Splits::kTest);
  CHECK(test_only.train.size() == 0);
  CHECK(test_only.test.size() == 10000);
  const DatasetSplits train_only = load_dataset("fmnist:limit=100", Splits::kTrain);
  CHECK(train_only.train.size() == 100);
  CHECK(train_only.test.size() == 0);
  CHECK(load_dataset("synthetic:n=32", Splits::kTest).test.size() == 32);  // its test set is its training set
}

TEST_CASE("limits take the first examples of each split") {
  const DatasetSplits d = load_dataset("fmnist:limit=100,test_limit=50");
  CHECK(d.train.size() == 100);
  CHECK(d.test.size() == 50);
}

TEST_CASE("the synthetic task equals the notebook's data drawn by Python PyTorch") {
  const DatasetSplits d = load_dataset("synthetic:n=320,features=16,seed=40");
  REQUIRE(d.train.inputs.sizes() == torch::IntArrayRef({320, 16}));
  for (int i = 0; i < 4; ++i) {
    CHECK(d.train.inputs[0][i].item<float>() == doctest::Approx(reference::kNotebookX0[i]).epsilon(1e-7));
  }
  CHECK(d.train.inputs.to(torch::kFloat64).sum().item<double>() ==
        doctest::Approx(reference::kNotebookXSum).epsilon(1e-6));
  for (int i = 0; i < 12; ++i) CHECK(d.train.targets[i].item<int64_t>() == reference::kNotebookTarget12[i]);
  CHECK(d.train.targets.sum().item<int64_t>() == reference::kNotebookTargetSum);
  CHECK(d.train.num_classes == 2);
}

TEST_CASE("CSV files load with a header, a label column and a separator") {
  test::TempDir dir;
  std::ofstream(dir / "train.csv") << "f1;label;f2\n0.5;1;2\n1.5;0;3\n2.5;2;4\n";
  const DatasetSplits d = load_dataset("csv:train=" + (dir / "train.csv") + ",label=1,sep=semicolon");
  CHECK(d.train.size() == 3);
  CHECK(d.train.num_classes == 3);
  CHECK(torch::equal(d.train.targets, torch::tensor({1, 0, 2}, torch::kLong)));
  CHECK(torch::allclose(d.train.inputs[2], torch::tensor({2.5f, 4.0f})));
  std::ofstream(dir / "bad.csv") << "1,2\n1,x\n";
  CHECK_THROWS_WITH_AS(load_dataset("csv:train=" + (dir / "bad.csv")),
                       doctest::Contains("line 2: not all cells are numbers"), fedra::Error);
  // Regression: target=float keeps the label column as real numbers; without it they are refused.
  std::ofstream(dir / "reg.csv") << "y,a,b\n0.25,1,2\n-1.5,3,4\n";
  const DatasetSplits r = load_dataset("csv:train=" + (dir / "reg.csv") + ",target=float");
  CHECK(torch::equal(r.train.targets, torch::tensor({0.25f, -1.5f})));
  CHECK(r.train.num_classes == 0);
  CHECK_THROWS_WITH_AS(load_dataset("csv:train=" + (dir / "reg.csv")),
                       doctest::Contains("label 0.25 is not a class index (0, 1, 2, ...); for regression targets add "
                                         "target=float"), fedra::Error);
}

TEST_CASE("IDX files load, gzip or not") {
  test::TempDir dir;
  // Two 2x2 uint8 images and their labels, uncompressed.
  const unsigned char images[] = {0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2,
                                  0, 255, 0, 255, 255, 255, 0, 0};
  const unsigned char labels[] = {0, 0, 8, 1, 0, 0, 0, 2, 1, 0};
  std::ofstream(dir / "img", std::ios::binary).write(reinterpret_cast<const char*>(images), sizeof(images));
  std::ofstream(dir / "lab", std::ios::binary).write(reinterpret_cast<const char*>(labels), sizeof(labels));
  const DatasetSplits d = load_dataset("idx:train_images=" + (dir / "img") + ",train_labels=" + (dir / "lab"));
  CHECK(d.train.inputs.sizes() == torch::IntArrayRef({2, 1, 2, 2}));
  CHECK(d.train.inputs[0][0][0][1].item<float>() == 1.0f);
  CHECK(d.train.num_classes == 2);
}

TEST_CASE("bad dataset specs say what is wrong") {
  CHECK_THROWS_WITH_AS(load_dataset("mnist"), doctest::Contains("unknown dataset 'mnist'"), fedra::Error);
  CHECK_THROWS_WITH_AS(load_dataset("fmnist:dir=/nonexistent"),
                       doctest::Contains("install Debian's dataset-fashion-mnist"), fedra::Error);
  CHECK_THROWS_WITH_AS(load_dataset("fmnist:limt=5"), doctest::Contains("unknown option 'limt'"), fedra::Error);
}

namespace {

// What torch.save({'x': x, 'y': y}, path) writes, written by LibTorch's own pickler.
void save_tensors(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& entries) {
  c10::Dict<std::string, at::Tensor> dict;
  for (const auto& [k, v] : entries) dict.insert(k, v);
  const std::vector<char> bytes = torch::pickle_save(c10::IValue(dict));
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

}  // namespace

TEST_CASE("tensors files (torch.save of {'x': X, 'y': Y}) load; wrong contents say what is wrong") {
  TempDir dir;
  const at::Tensor x = torch::rand({6, 3}, at::kDouble);
  save_tensors(dir / "d.pt", {{"x", x}, {"y", torch::tensor({0, 2, 1, 2, 0, 1}).reshape({6, 1})}});
  const DatasetSplits s = load_dataset("tensors:" + (dir / "d.pt") + ",limit=5");
  CHECK(s.train.size() == 5);
  CHECK((s.train.inputs.scalar_type() == at::kFloat));  // float64 features become float32
  CHECK(torch::allclose(s.train.inputs, x.narrow(0, 0, 5).to(at::kFloat)));
  CHECK(torch::equal(s.train.targets, torch::tensor({0, 2, 1, 2, 0}, at::kLong)));  // [N, 1] labels flattened
  CHECK(s.train.num_classes == 3);
  save_tensors(dir / "t.pt", {{"features", x}, {"label", torch::tensor({1, 1, 0, 0, 1, 1})}});
  save_tensors(dir / "n.pt", {{"features", x}, {"label", torch::tensor({2, 0, 1, 2, 0, 1})}});
  const DatasetSplits named = load_dataset("tensors:train=" + (dir / "n.pt") + ",test=" + (dir / "t.pt") + ",x=features,y=label");
  CHECK(named.train.size() == 6);
  CHECK(named.test.size() == 6);
  CHECK(torch::equal(named.test.targets, torch::tensor({1, 1, 0, 0, 1, 1}, at::kLong)));

  // Float targets are regression (or multi-label) targets: kept as float32, [N] or [N, K], no classes.
  const at::Tensor yr = torch::rand({6, 2}, at::kDouble);
  save_tensors(dir / "reg.pt", {{"x", x}, {"y", yr}});
  const DatasetSplits reg = load_dataset("tensors:" + (dir / "reg.pt"));
  CHECK((reg.train.targets.scalar_type() == at::kFloat));
  CHECK(torch::allclose(reg.train.targets, yr.to(at::kFloat)));
  CHECK(reg.train.num_classes == 0);
  CHECK(label_histogram(reg.train).empty());
  save_tensors(dir / "nan.pt", {{"x", x}, {"y", torch::full({6}, std::nan(""), at::kFloat)}});
  CHECK_THROWS_WITH_AS(load_dataset("tensors:" + (dir / "nan.pt")), doctest::Contains("holds NaN or infinite targets"), Error);
  save_tensors(dir / "cube.pt", {{"x", x}, {"y", torch::rand({6, 2, 2})}});
  CHECK_THROWS_WITH_AS(load_dataset("tensors:" + (dir / "cube.pt")), doctest::Contains("float targets [N] or [N, K]"), Error);
  CHECK_THROWS_WITH_AS(load_dataset("tensors:" + (dir / "d.pt") + ",y=labels"),
                       doctest::Contains("has no tensor 'labels' (its keys: x, y; name them with x= and y=)"), Error);
  save_tensors(dir / "short.pt", {{"x", x}, {"y", torch::tensor({0, 1})}});
  CHECK_THROWS_WITH_AS(load_dataset("tensors:" + (dir / "short.pt")), doctest::Contains("for 6 examples"), Error);
  std::ofstream(dir / "junk.pt") << "not a zip";
  CHECK_THROWS_WITH_AS(load_dataset("tensors:" + (dir / "junk.pt")), doctest::Contains("as a torch.save file"), Error);
  const std::vector<char> bare = torch::pickle_save(c10::IValue(x));
  std::ofstream(dir / "bare.pt", std::ios::binary).write(bare.data(), static_cast<std::streamsize>(bare.size()));
  CHECK_THROWS_WITH_AS(load_dataset("tensors:" + (dir / "bare.pt")), doctest::Contains("holds a Tensor, not a dict"), Error);
  CHECK_THROWS_WITH_AS(load_dataset("tensors:" + (dir / "nope.pt")), doctest::Contains("does not exist"), Error);
  // A per-site spec is for workers; the coordinator is told to name its own evaluation data.
  CHECK_THROWS_WITH_AS(load_dataset("tensors:site-{client}.pt"), doctest::Contains("--test-data"), Error);
}
