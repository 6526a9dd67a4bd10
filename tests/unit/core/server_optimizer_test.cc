#include "tests/testing.h"

#include <cmath>

#include <torch/torch.h>

#include "core/federated/server_optimizer.h"
#include "core/kit/options.h"
#include "core/model/model.h"
#include "core/training/training.h"
#include "tests/reference/server_opt.h"
#include "tests/test_util.h"

using namespace fedra;
using fedra::test::max_diff;
namespace ref = fedra::reference;

namespace {

// The reference's 17 values as a model: a 3x4 weight, a bias of 5, and an integer buffer.
NamedTensors model_of(const float* values) {
  const at::Tensor flat = torch::from_blob(const_cast<float*>(values), {ref::kServerOptN}, at::kFloat).clone();
  return {{"fc.weight", flat.narrow(0, 0, 12).reshape({3, 4}).clone()},
          {"fc.bias", flat.narrow(0, 12, 5).clone()},
          {"steps", torch::tensor({int64_t{7}})}};
}

std::vector<double> flat(const NamedTensors& m) {
  std::vector<double> out;
  for (size_t k = 0; k < 2; ++k) {
    const at::Tensor t = m[k].second.reshape({-1}).to(at::kDouble);
    for (int64_t i = 0; i < t.size(0); ++i) out.push_back(t[i].item<double>());
  }
  return out;
}

// The aggregate the reference hands over in round t: x + 0.02 cos(0.7 i + t) - 0.01 x, in float.
NamedTensors aggregate_of(const NamedTensors& x, int t) {
  const std::vector<double> v = flat(x);
  std::vector<float> a(v.size());
  for (size_t i = 0; i < v.size(); ++i) a[i] = static_cast<float>(v[i] + 0.02 * std::cos(0.7 * i + t) - 0.01 * v[i]);
  NamedTensors out = model_of(a.data());
  out[2].second = torch::tensor({int64_t{8}});  // the buffer the workers report
  return out;
}

ServerOptOptions options_for(ServerOpt opt, double lr) {
  return ServerOptOptions()
      .server_opt(opt)
      .server_lr(lr)
      .server_momentum(ref::kServerOptMu)
      .server_beta1(ref::kServerOptBeta1)
      .server_beta2(ref::kServerOptBeta2)
      .server_tau(ref::kServerOptTau);
}

void check_against_reference(ServerOpt opt, double lr, const double (*want)[ref::kServerOptN]) {
  ServerOptimizer server(options_for(opt, lr));
  NamedTensors x = model_of(ref::kServerOptX0);
  for (int t = 0; t < ref::kServerOptRounds; ++t) {
    CAPTURE(t);
    NamedTensors a = aggregate_of(x, t);
    server.step(x, a);
    x = std::move(a);
    const std::vector<double> got = flat(x);
    double worst = 0;
    for (int i = 0; i < ref::kServerOptN; ++i) worst = std::max(worst, std::abs(got[i] - want[t][i]));
    CHECK(worst < 2e-7);
    CHECK(x[2].second.item<int64_t>() == 8);  // integer buffers take the aggregate's value
  }
}

}  // namespace

TEST_CASE("every server optimiser's update equals the numpy reference of the published rules") {
  SUBCASE("momentum (FedAvgM)") { check_against_reference(ServerOpt::kMomentum, ref::kServerOptLrMomentum, ref::kServerOptMomentum); }
  SUBCASE("adagrad") { check_against_reference(ServerOpt::kAdagrad, ref::kServerOptLrAdagrad, ref::kServerOptAdagrad); }
  SUBCASE("adam") { check_against_reference(ServerOpt::kAdam, ref::kServerOptLrAdam, ref::kServerOptAdam); }
  SUBCASE("yogi") { check_against_reference(ServerOpt::kYogi, ref::kServerOptLrYogi, ref::kServerOptYogi); }
}

TEST_CASE("server optimiser state survives a checkpoint: resuming gives the same models") {
  for (ServerOpt opt : {ServerOpt::kMomentum, ServerOpt::kAdam, ServerOpt::kYogi}) {
    CAPTURE(enum_name(opt));
    ServerOptimizer straight(options_for(opt, 0.05));
    NamedTensors x = model_of(ref::kServerOptX0);
    NamedTensors y;
    ServerOptimizer resumed(options_for(opt, 0.05));
    for (int t = 0; t < 4; ++t) {
      NamedTensors a = aggregate_of(x, t);
      straight.step(x, a);
      x = std::move(a);
      if (t == 1) {
        resumed.load_state(straight.state());
        y = x;
      } else if (t > 1) {
        NamedTensors b = aggregate_of(y, t);
        resumed.step(y, b);
        y = std::move(b);
        CHECK(flat(x) == flat(y));
      }
    }
  }
  ServerOptimizer server(ServerOptOptions().server_opt(ServerOpt::kAdam));
  CHECK_THROWS_WITH_AS(server.load_state({{"fc.weight", torch::zeros({3, 4})}}),
                       "'fc.weight' is not server optimiser state (server_opt/m/NAME or server_opt/v/NAME)",
                       fedra::Error);
}

TEST_CASE("server_opt none leaves the aggregate as the next model, and bad settings are refused by name") {
  ServerOptimizer none(ServerOptOptions{});
  const NamedTensors x = model_of(ref::kServerOptX0);
  NamedTensors a = aggregate_of(x, 0);
  const std::vector<double> before = flat(a);
  none.step(x, a);
  CHECK(flat(a) == before);
  CHECK(ServerOptOptions().server_opt(ServerOpt::kMomentum).effective_lr() == 1.0);
  CHECK(ServerOptOptions().server_opt(ServerOpt::kAdam).effective_lr() == 0.01);
  CHECK_THROWS_WITH_AS(parse_options<ServerOptOptions>(OptionMap("fedavg", {{"server_opt", "sgd"}})),
                       "fedavg.server_opt must be none, momentum, adagrad, adam or yogi, got 'sgd'", fedra::Error);
  CHECK_THROWS_WITH_AS(parse_options<ServerOptOptions>(OptionMap("fedavg", {{"server_tau", "0"}})),
                       "fedavg.server_tau must be > 0, got 0", fedra::Error);
}

TEST_CASE("FedProx: mu = 0 is FedAvg's local training bit for bit; mu > 0 adds mu * (w - w_start) to the gradient") {
  torch::manual_seed(5);
  Dataset d;
  d.inputs = torch::randn({24, 6});
  d.targets = torch::randint(0, 3, {24}, torch::kLong);
  d.num_classes = 3;
  const auto start = model_state(*build_model("mlp:6-8-3", 2));
  auto fresh = [&] {
    auto m = build_model("mlp:6-8-3", 2);
    load_model_state(*m, start);
    return m;
  };
  TrainOptions o;
  o.batch_size = 24;  // one full batch per step: the order of the rows does not matter
  o.epochs = 3;  // one full-batch step per epoch
  o.optim.lr = 0.5;
  auto plain = fresh();
  train_local(plain, d, o);
  o.proximal_mu = 0;
  auto zero = fresh();
  train_local(zero, d, o);
  CHECK(max_diff(model_state(*plain), model_state(*zero)) == 0);

  // mu > 0 against autograd of loss + mu/2 ||w - w_start||^2, three full-batch SGD steps.
  const double mu = 0.8;
  o.proximal_mu = mu;
  auto prox = fresh();
  train_local(prox, d, o);
  auto manual = fresh();
  std::vector<at::Tensor> anchor;
  for (const auto& p : manual->parameters()) anchor.push_back(p.detach().clone());
  for (int step = 0; step < 3; ++step) {
    for (auto& p : manual->parameters()) p.mutable_grad() = at::Tensor();
    at::Tensor loss = compute_loss(manual->forward(d.inputs), d.targets, "ce");
    size_t i = 0;
    for (const auto& p : manual->parameters()) loss = loss + 0.5 * mu * (p - anchor[i++]).pow(2).sum();
    loss.backward();
    torch::NoGradGuard no_grad;
    for (auto& p : manual->parameters()) p.sub_(p.grad(), 0.5);
  }
  CHECK(max_diff(model_state(*prox), model_state(*manual)) < 1e-5);
  CHECK(max_diff(model_state(*prox), model_state(*plain)) > 1e-4);  // the term does change training
}
