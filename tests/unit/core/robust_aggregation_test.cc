#include "tests/testing.h"

#include <torch/torch.h>

#include "core/federated/robust_aggregation.h"
#include "core/kit/options.h"

using namespace fedra;

namespace {

// An update of two tensors: "w" = the given values, "n" = an integer counter.
NamedTensors update(std::vector<float> values, int64_t counter = 0) {
  return {{"w", torch::tensor(values)}, {"n", torch::tensor({counter})}};
}

std::vector<float> values(const NamedTensors& m) {
  const at::Tensor t = m[0].second.contiguous();
  return std::vector<float>(t.data_ptr<float>(), t.data_ptr<float>() + t.numel());
}

}  // namespace

TEST_CASE("coordinate-wise median: the middle value, the mean of the two middles for an even count") {
  const std::vector<NamedTensors> odd = {update({1, 10, -3}, 5), update({2, -20, 0}, 6), update({100, 0, 1}, 7)};
  CHECK(values(coordinate_median(odd)) == std::vector<float>{2, 0, 0});
  CHECK(coordinate_median(odd)[1].second.item<int64_t>() == 5);  // integer tensors: the first update's
  std::vector<NamedTensors> even = odd;
  even.push_back(update({4, 1, 1}));
  CHECK(values(coordinate_median(even)) == std::vector<float>{3, 0.5f, 0.5f});
}

TEST_CASE("trimmed mean drops floor(beta n) values at each end of every coordinate") {
  std::vector<NamedTensors> u;
  for (float v : {1.f, 2.f, 3.f, 4.f, 1000.f}) u.push_back(update({v, -v}));
  CHECK(values(trimmed_mean(u, 0.2)) == std::vector<float>{3, -3});   // drops 1 and 1000 (and -1000, -1)
  CHECK(values(trimmed_mean(u, 0.0)) == std::vector<float>{202, -202});  // nothing dropped: the mean
  CHECK(values(trimmed_mean(u, 0.1)) == std::vector<float>{202, -202});  // floor(0.5) = 0
  // The greatest first (it is moved out of the way while the least is put in front), and k = 2.
  std::vector<NamedTensors> down;
  for (float v : {1000.f, 4.f, 3.f, 2.f, 1.f, -7.f, 5.f}) down.push_back(update({v, v}));
  CHECK(values(trimmed_mean(down, 0.2)) == std::vector<float>{3, 3});   // drops -7, 1000 -> (1+2+3+4+5)/5
  CHECK(values(trimmed_mean(down, 0.3)) == std::vector<float>{3, 3});   // drops -7, 1, 5, 1000 -> (2+3+4)/3
  CHECK(values(coordinate_median(down)) == std::vector<float>{3, 3});
}

TEST_CASE("trimmed mean equals sort-and-average on random data with ties, across block boundaries") {
  // 3001 coordinates cross several 1024-coordinate blocks and end inside one; small integers make
  // ties frequent. The reference sorts the stacked values in double.
  torch::manual_seed(7);
  for (int64_t n : {3, 7, 10, 11}) {
    std::vector<NamedTensors> u;
    for (int64_t j = 0; j < n; ++j) {
      u.push_back({{"w", torch::randint(-4, 5, {3001}, torch::TensorOptions().dtype(at::kFloat)) * 0.5}});
    }
    std::vector<at::Tensor> cols;
    for (const auto& x : u) cols.push_back(x[0].second.to(at::kDouble));
    const at::Tensor sorted = std::get<0>(torch::stack(cols).sort(0));
    for (double beta : {0.0, 0.1, 0.2, 0.3, 0.4}) {
      const auto k = static_cast<int64_t>(beta * static_cast<double>(n));
      if (n - 2 * k < 1) continue;
      CAPTURE(n);
      CAPTURE(beta);
      const at::Tensor expected = sorted.narrow(0, k, n - 2 * k).mean(0).to(at::kFloat);
      CHECK(torch::allclose(trimmed_mean(u, beta)[0].second, expected, 1e-6, 1e-6));
    }
  }
}

TEST_CASE("krum picks an update of the honest cluster; multi_krum averages the m most central") {
  std::vector<NamedTensors> u = {update({1.0f, 1.0f}), update({1.1f, 0.9f}), update({0.9f, 1.1f}),
                                 update({1.05f, 1.0f}), update({-50, 40}), update({60, -70})};
  const auto scores = krum_scores(u, 2);
  REQUIRE(scores.size() == 6);
  CHECK(scores[4] > 100 * scores[0]);
  const std::vector<size_t> one = krum_select(u, 1, 1);
  REQUIRE(one.size() == 1);
  CHECK(one[0] < 4);
  const std::vector<size_t> four = krum_select(u, 1, 4);
  CHECK(std::all_of(four.begin(), four.end(), [](size_t i) { return i < 4; }));
  RobustOptions o;
  o.aggregate(Aggregator::kMultiKrum).krum_f(1).krum_m(4);
  const std::vector<float> mean = values(robust_aggregate(o, u));
  CHECK(mean[0] == doctest::Approx(1.0125));
  CHECK(mean[1] == doctest::Approx(1.0));
  CHECK_THROWS_WITH_AS(krum_select(u, 2, 1), "krum with krum_f = 2 needs at least 7 updates, the round has 6",
                       fedra::Error);
}

TEST_CASE("norm clipping scales an update's difference from the global model down to C, and no further") {
  const NamedTensors global = update({1, 1}, 3);
  NamedTensors big = update({4, 5}, 9);  // difference (3, 4): norm 5
  CHECK(clip_to_norm(global, big, 2.5) == doctest::Approx(5));
  CHECK(values(big) == std::vector<float>{2.5f, 3.0f});
  CHECK(big[1].second.item<int64_t>() == 9);  // integer tensors untouched
  NamedTensors small = update({1.3f, 1.4f});
  clip_to_norm(global, small, 2.5);
  CHECK(values(small) == std::vector<float>{1.3f, 1.4f});
}

TEST_CASE("robust options are checked, naming the option") {
  CHECK_THROWS_WITH_AS(parse_options<RobustOptions>(OptionMap("fedavg", {{"trim_beta", "0.5"}})),
                       "fedavg.trim_beta must be in [0, 0.5), got 0.5", fedra::Error);
  CHECK_THROWS_WITH_AS(parse_options<RobustOptions>(OptionMap("fedavg", {{"aggregate", "average"}})),
                       "fedavg.aggregate must be mean, median, trimmed_mean, krum or multi_krum, got 'average'",
                       fedra::Error);
  CHECK(parse_options<RobustOptions>(OptionMap("fedavg", {{"aggregate", "median"}})).holds_updates());
  CHECK_FALSE(parse_options<RobustOptions>(OptionMap("fedavg", {})).holds_updates());
}
