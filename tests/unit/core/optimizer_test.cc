#include "tests/testing.h"

#include <torch/torch.h>

#include "core/training/optimizer.h"

using namespace fedra;

namespace {

// Two copies of the same parameters; one stepped by torch::optim, one by ParamOptimizer, with
// the same gradients; the bits must agree after several steps.
void compare_with_torch(const OptimizerConfig& c, int steps) {
  torch::manual_seed(3);
  std::vector<at::Tensor> a = {torch::randn({4, 3}), torch::randn({3})};
  std::vector<at::Tensor> b;
  for (auto& t : a) {
    b.push_back(t.clone());
    t.set_requires_grad(true);
  }
  std::unique_ptr<torch::optim::Optimizer> reference;
  if (c.name == "sgd") {
    reference = std::make_unique<torch::optim::SGD>(
        a, torch::optim::SGDOptions(c.lr).momentum(c.momentum).weight_decay(c.weight_decay));
  } else {
    reference = std::make_unique<torch::optim::Adam>(
        a, torch::optim::AdamOptions(c.lr).weight_decay(c.weight_decay));
  }
  ParamOptimizer mine(c, {"w", "b"}, b);
  // A third copy stepped slice by slice, as gradsum's buckets arrive.
  std::vector<at::Tensor> s3 = {b[0].clone(), b[1].clone()};
  ParamOptimizer sliced(c, {"w", "b"}, s3);
  for (int s = 0; s < steps; ++s) {
    std::vector<at::Tensor> grads = {torch::randn({4, 3}), torch::randn({3})};
    for (size_t i = 0; i < a.size(); ++i) a[i].mutable_grad() = grads[i].clone();
    reference->step();
    // In reverse order, as buckets arrive: the order of parameters must not matter.
    mine.step(1, grads[1]);
    mine.step(0, grads[0]);
    sliced.begin_step();
    sliced.update(1, 0, grads[1]);
    sliced.update(0, 5, grads[0].view({-1}).narrow(0, 5, 7));
    sliced.update(0, 0, grads[0].view({-1}).narrow(0, 0, 5));
  }
  for (size_t i = 0; i < a.size(); ++i) {
    CHECK(torch::equal(a[i].detach(), b[i]));
    CHECK(torch::equal(a[i].detach(), s3[i]));
  }
}

}  // namespace

TEST_CASE("ParamOptimizer takes torch::optim's steps bit for bit") {
  OptimizerConfig plain;
  plain.lr = 0.1;
  compare_with_torch(plain, 5);
  OptimizerConfig momentum = plain;
  momentum.momentum = 0.9;
  momentum.weight_decay = 0.01;
  compare_with_torch(momentum, 5);
  OptimizerConfig adam;
  adam.name = "adam";
  adam.lr = 0.01;
  adam.weight_decay = 0.001;
  compare_with_torch(adam, 5);
}

TEST_CASE("ParamOptimizer state moves to another optimiser and the two stay identical") {
  for (const std::string name : {"sgd", "adam"}) {
    OptimizerConfig c;
    c.name = name;
    c.lr = 0.05;
    c.momentum = name == "sgd" ? 0.9 : 0.0;
    torch::manual_seed(5);
    std::vector<at::Tensor> p1 = {torch::randn({5})};
    std::vector<at::Tensor> p2 = {p1[0].clone()};
    ParamOptimizer first(c, {"w"}, p1);
    first.step(0, torch::randn({5}));
    ParamOptimizer second(c, {"w"}, p2);
    second.load_state(first.state());
    p2[0].copy_(p1[0]);
    const at::Tensor g = torch::randn({5});
    first.step(0, g);
    second.step(0, g);
    CHECK(torch::equal(p1[0], p2[0]));
  }
}

TEST_CASE("ParamOptimizer refuses wrong shapes, unknown names and bad settings") {
  OptimizerConfig c;
  std::vector<at::Tensor> p = {torch::zeros({2, 2})};
  ParamOptimizer opt(c, {"w"}, p);
  CHECK_THROWS_WITH_AS(opt.step(0, torch::zeros({3})), doctest::Contains("gradient for 'w' is float32[3]"),
                       Error);
  NamedTensors bad = {{"v.momentum", torch::zeros({2, 2})}};
  CHECK_THROWS_WITH_AS(opt.load_state(bad), doctest::Contains("1 tensors this optimizer does not use"), Error);
  OptimizerConfig wrong;
  wrong.name = "lbfgs";
  CHECK_THROWS_WITH_AS(ParamOptimizer(wrong, {"w"}, p), doctest::Contains("unknown optimizer 'lbfgs'"), Error);
}
