#include "tests/testing.h"

#include <cmath>

#include <torch/torch.h>

#include "core/federated/privacy.h"
#include "core/kit/options.h"
#include "tests/reference/rdp.h"

using namespace fedra;
namespace ref = fedra::reference;

TEST_CASE("the accountant's orders are the reference's") {
  REQUIRE(RdpAccountant::orders().size() == static_cast<size_t>(ref::kRdpOrders));
  for (int i = 0; i < ref::kRdpOrders; ++i) CHECK(RdpAccountant::orders()[static_cast<size_t>(i)] == ref::kRdpOrder[i]);
}

TEST_CASE("sampled Gaussian RDP equals the numerically integrated definition on a grid of (q, sigma, order)") {
  // tests/reference/rdp.py integrates E_mu0[(mu / mu0)^a]; Fedra sums the closed-form series.
  double worst = 0;
  for (const auto& c : ref::kRdpCase) {
    for (int i = 0; i < ref::kRdpOrders; ++i) {
      const double got = sampled_gaussian_rdp(c.q, c.sigma, ref::kRdpOrder[i]);
      const double want = c.rdp[i];
      const double rel = std::abs(got - want) / std::max(std::abs(want), 1e-12);
      worst = std::max(worst, rel);
      if (rel > 1e-6) {
        CAPTURE(c.q);
        CAPTURE(c.sigma);
        CAPTURE(ref::kRdpOrder[i]);
        CHECK(got == doctest::Approx(want).epsilon(1e-6));
      }
    }
  }
  MESSAGE("largest relative difference from the reference: " << worst);
  CHECK(worst < 1e-6);
}

TEST_CASE("epsilon after T steps matches the reference, and composition is additive") {
  for (const auto& c : ref::kRdpCase) {
    for (int s = 0; s < ref::kRdpSteps; ++s) {
      RdpAccountant a;
      a.add(c.q, c.sigma, ref::kRdpStepCounts[s]);
      CAPTURE(c.q);
      CAPTURE(c.sigma);
      CAPTURE(ref::kRdpStepCounts[s]);
      CHECK(a.epsilon(ref::kRdpDelta) == doctest::Approx(c.epsilon[s]).epsilon(1e-6));
    }
  }
  RdpAccountant once, twice;
  once.add(0.1, 1.1, 200);
  for (int i = 0; i < 200; ++i) twice.add(0.1, 1.1);
  CHECK(once.epsilon(1e-5) == doctest::Approx(twice.epsilon(1e-5)).epsilon(1e-12));
}

TEST_CASE("Abadi et al. 2016's example: q 0.01, sigma 4, 10,000 steps, delta 1e-5") {
  RdpAccountant a;
  a.add(0.01, 4.0, 10000);
  double order = 0;
  const double eps = a.epsilon(1e-5, &order);
  MESSAGE("epsilon " << eps << " at order " << order << " (the paper's moments accountant: about 1.26)");
  CHECK(eps == doctest::Approx(ref::kRdpAbadiEpsilon).epsilon(1e-6));
  CHECK(eps < 1.26);  // RDP with Balle et al.'s conversion is tighter than the moments accountant
  CHECK(eps > 0.9);
}

TEST_CASE("edge cases: no sampling costs nothing, full sampling is the Gaussian mechanism, no noise is infinite") {
  CHECK(sampled_gaussian_rdp(0, 1.0, 2.5) == 0);
  CHECK(sampled_gaussian_rdp(1, 2.0, 3.0) == doctest::Approx(3.0 / 8.0));
  CHECK(std::isinf(sampled_gaussian_rdp(0.1, 0, 2.0)));
  CHECK(RdpAccountant().epsilon(1e-5) == 0);
  CHECK_THROWS_WITH(sampled_gaussian_rdp(0.1, 1.0, 1.0), "RDP order must be > 1, got 1");
}

TEST_CASE("adaptive clipping raises the update noise so the pair costs one mechanism of noise z") {
  DpOptions o;
  o.dp(DpMode::kServer).dp_noise(1.0).dp_adaptive(true);
  const DpNoise n = dp_noise_for(o, 100);  // count noise 100 / 20 = 5
  CHECK(n.count == doctest::Approx(5.0));
  // 1/z^2 = 1/z_u^2 + 1/(2 s_b)^2: the two Gaussian mechanisms compose to one of multiplier z.
  CHECK(1.0 / (n.update * n.update) + 1.0 / (4 * n.count * n.count) == doctest::Approx(1.0));
  o.dp_noise(1.2);
  CHECK_THROWS_WITH(dp_noise_for(o, 10), doctest::Contains("raise dp_count_noise"));
  o.dp_adaptive(false);
  CHECK(dp_noise_for(o, 10).update == 1.2);
}

TEST_CASE("the DP mean clips each update to C, adds noise of the asked deviation, divides by the sampled count") {
  const NamedTensors global = {{"w", torch::zeros({4000})}, {"steps", torch::tensor({int64_t{3}})}};
  DpMean mean;
  mean.reset(global);
  // Update norms 10 (clipped to 1), 0.5 (kept): both along the first coordinate.
  NamedTensors big = {{"w", torch::zeros({4000})}, {"steps", torch::tensor({int64_t{9}})}};
  big[0].second[0] = 10;
  NamedTensors small = {{"w", torch::zeros({4000})}, {"steps", torch::tensor({int64_t{9}})}};
  small[0].second[0] = 0.5;
  CHECK(mean.add(big, 1.0) == doctest::Approx(10));
  CHECK(mean.add(small, 1.0) == doctest::Approx(0.5));
  auto gen = dp_generator(5);
  at::Generator quiet = dp_generator(5);
  NamedTensors next = mean.finish(0.0, 4.0, quiet);
  CHECK(next[0].second[0].item<float>() == doctest::Approx((1.0 + 0.5) / 4.0));
  CHECK(next[1].second.item<int64_t>() == 3);  // integer tensors keep the global model's values
  mean.reset(global);
  NamedTensors noisy = mean.finish(2.0, 1.0, gen);
  const double sd = noisy[0].second.to(at::kDouble).std().item<double>();
  CHECK(sd == doctest::Approx(2.0).epsilon(0.05));  // 4000 draws: within 5%
  // The same seed gives the same noise; seed 0 draws a fresh one from the operating system.
  auto g1 = dp_generator(11), g2 = dp_generator(11), g3 = dp_generator(0), g4 = dp_generator(0);
  const auto draw = [](at::Generator& g) { return at::empty({8}, at::kDouble).normal_(0, 1, g); };
  CHECK(torch::equal(draw(g1), draw(g2)));
  CHECK_FALSE(torch::equal(draw(g3), draw(g4)));
}

TEST_CASE("a worker's clip_and_noise: the sent update is within C plus its noise") {
  const NamedTensors global = {{"w", torch::ones({3})}};
  NamedTensors w = {{"w", torch::tensor({4.f, 5.f, 1.f})}};  // update (3, 4, 0): norm 5
  auto gen = dp_generator(3);
  CHECK(clip_and_noise(global, w, 1.0, 0.0, gen) == doctest::Approx(5.0));
  CHECK(torch::allclose(w[0].second, torch::tensor({1.6f, 1.8f, 1.f})));
}
