#include "tests/testing.h"

#include <set>

#include <torch/torch.h>

#include "core/kit/options.h"
#include "core/model/model.h"
#include "core/training/training.h"
#include "strategies/psl/psl.h"

using namespace fedra;
using namespace fedra::psl;

TEST_CASE("psnet is PSL.md's reference net: 46,740 weights, 1,040 shared in conv1") {
  auto net = build_model("psnet", 1);
  CHECK(count_parameters(*net) == 46740);
  CHECK(net->forward(torch::zeros({3, 1, 28, 28})).sizes() == torch::IntArrayRef({3, 10}));
  int64_t conv1 = 0;
  for (const auto& p : net->named_parameters()) {
    if (p.key().rfind("conv1.", 0) == 0) conv1 += p.value().numel();
  }
  CHECK(conv1 == 1040);
}

TEST_CASE("a separable layer is block-diagonal: block b reads only chunk b") {
  torch::manual_seed(0);
  SeparableLinear sl(6, 3, 2);
  const at::Tensor x = torch::randn({4, 6});
  const at::Tensor y = sl->forward(x);
  CHECK(y.sizes() == torch::IntArrayRef({4, 6}));
  at::Tensor x2 = x.clone();
  x2.narrow(1, 2, 2).add_(1.0);  // change chunk 1 only
  const at::Tensor y2 = sl->forward(x2);
  CHECK(torch::equal(y.narrow(1, 0, 2), y2.narrow(1, 0, 2)));
  CHECK(!torch::equal(y.narrow(1, 2, 2), y2.narrow(1, 2, 2)));
  CHECK(torch::equal(y.narrow(1, 4, 2), y2.narrow(1, 4, 2)));
  // Block 1 equals a dense layer with block 1's weights on chunk 1.
  const at::Tensor dense = torch::matmul(x.narrow(1, 2, 2), sl->weight[1].t()) + sl->bias[1];
  CHECK(torch::allclose(y.narrow(1, 2, 2), dense));
}

TEST_CASE("the PSL loss is sum_{j != y} exp(s_j - s_y), batch mean, and exp(CE) - 1 per sample") {
  const at::Tensor s = torch::tensor({{1.0, 2.0, 0.5}, {0.0, -1.0, 3.0}}, torch::kDouble);
  const at::Tensor y = torch::tensor({0, 2}, torch::kLong);
  const double a = std::exp(1.0) + std::exp(-0.5), b = std::exp(-3.0) + std::exp(-4.0);
  CHECK(psl_loss(s, y, false).item<double>() == doctest::Approx((a + b) / 2).epsilon(1e-12));
  const double a2 = std::exp(2.0) + std::exp(-1.0), b2 = std::exp(-6.0) + std::exp(-8.0);
  CHECK(compute_loss(s, y, "psl2").item<double>() == doctest::Approx((a2 + b2) / 2).epsilon(1e-12));
  const at::Tensor ce = torch::nn::functional::cross_entropy(
      s, y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
  CHECK(torch::allclose(ce.exp() - 1, torch::tensor({a, b}, torch::kDouble)));
}

TEST_CASE("pair assignment: every unordered pair exactly once, balanced, few towers per worker") {
  // The results stated in docs/strategies.md. With 2 workers one must hold all 10 towers: if
  // each missed a class, the pair of those two classes would have no owner.
  const std::map<int64_t, int64_t> max_towers = {{1, 10}, {2, 10}, {3, 7}, {5, 6}, {10, 5}, {45, 2}};
  for (const auto& [W, want] : max_towers) {
    INFO("workers " << W);
    const auto shares = assign_pairs(10, W);
    REQUIRE(static_cast<int64_t>(shares.size()) == W);
    std::set<std::pair<int64_t, int64_t>> seen;
    size_t most = 0, least = 100, worst = 0;
    for (const auto& s : shares) {
      std::set<int64_t> touched;
      for (const auto& p : s.pairs) {
        CHECK(p.first < p.second);
        CHECK(seen.insert(p).second);  // nobody else owns it
        touched.insert(p.first);
        touched.insert(p.second);
      }
      CHECK(std::vector<int64_t>(touched.begin(), touched.end()) == s.towers);
      most = std::max(most, s.pairs.size());
      least = std::min(least, s.pairs.size());
      worst = std::max(worst, s.towers.size());
    }
    CHECK(seen.size() == 45);
    CHECK(most - least <= 1);
    std::string towers_each;
    for (const auto& sh : shares) towers_each += std::to_string(sh.towers.size()) + " ";
    MESSAGE("W=" << W << ": pairs per worker " << least << "-" << most << ", towers per worker " << towers_each);
    CHECK(static_cast<int64_t>(worst) == want);
  }
  CHECK_THROWS_WITH_AS(assign_pairs(10, 46), doctest::Contains("1 to 45 workers"), Error);
}

TEST_CASE("sub-network sizes match PSL.md: one pair 21.8%, six towers 60.9%") {
  auto net = build_model("psnet", 1);
  const double total = 46740;
  CHECK(sub_network_size(*net, sub_network_map(*net, 10, {3, 7})) == 10180);
  CHECK(sub_network_size(*net, sub_network_map(*net, 10, {0, 1, 2, 3, 4, 5})) == 28460);
  CHECK(28460 / total == doctest::Approx(0.609).epsilon(0.001));
  CHECK(10180 / total == doctest::Approx(0.218).epsilon(0.001));
  CHECK(sub_network_size(*net, sub_network_map(*net, 10, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9})) == 46740);
  // The sub-network's own parameters have exactly the mapped shapes, in the same order.
  auto sub = build_model("psnet:classes=2", 1);
  const auto map = sub_network_map(*net, 10, {3, 7});
  const auto sub_params = sub->named_parameters();
  REQUIRE(sub_params.size() == map.size());
  for (size_t i = 0; i < map.size(); ++i) {
    CHECK(sub_params[i].key() == map[i].name);
    const at::Tensor& full = net->named_parameters()[map[i].name];
    const at::Tensor picked = map[i].rows.defined() ? full.index_select(0, map[i].rows) : full;
    CHECK(picked.sizes() == sub_params[i].value().sizes());
  }
}

TEST_CASE("scatter-added partial gradients equal the whole PSL gradient, for W = 1, 2, 3, 5, 45") {
  // In double precision, so that the only difference left is the order of the additions.
  torch::manual_seed(3);
  auto net = build_model("psnet", 7);
  net->to(torch::kDouble);
  const at::Tensor x = torch::randn({64, 1, 28, 28}, torch::kDouble);
  const at::Tensor y = torch::randint(0, 10, {64}, torch::kLong);
  for (const bool squared : {false, true}) {
    for (auto& p : net->parameters()) p.mutable_grad() = at::Tensor();
    const at::Tensor whole = psl_loss(net->forward(x), y, squared);
    whole.backward();
    std::map<std::string, at::Tensor> want;
    for (const auto& p : net->named_parameters()) want[p.key()] = p.value().grad().clone();

    for (const int64_t W : {1, 2, 3, 5, 45}) {
      INFO("workers " << W << (squared ? ", squared" : ""));
      std::map<std::string, at::Tensor> got;
      for (const auto& p : net->named_parameters()) got[p.key()] = torch::zeros_like(p.value());
      double loss = 0;
      for (const auto& share : assign_pairs(10, W)) {
        const auto map = sub_network_map(*net, 10, share.towers);
        auto sub = build_model(fmt::format("psnet:classes={}", share.towers.size()), 1);
        sub->to(torch::kDouble);
        NamedTensors weights;
        for (const auto& sp : map) {
          const at::Tensor full = net->named_parameters()[sp.name].detach();
          weights.emplace_back(sp.name, sp.rows.defined() ? full.index_select(0, sp.rows) : full);
        }
        load_model_state(*sub, weights);
        const auto [rows, local] = select_rows(y, share.towers);
        const at::Tensor l = element_loss(sub->forward(x.index_select(0, rows)), local, share, 64, squared);
        l.backward();
        loss += l.item<double>();
        const auto sp_params = sub->named_parameters();
        for (size_t i = 0; i < map.size(); ++i) {
          const at::Tensor g = sp_params[i].value().grad();
          if (map[i].rows.defined()) got[map[i].name].index_add_(0, map[i].rows, g);
          else got[map[i].name].add_(g);
        }
      }
      CHECK(loss == doctest::Approx(whole.item<double>()).epsilon(1e-12));
      for (const auto& [name, g] : want) {
        INFO(name);
        const double scale = std::max(1e-3, g.abs().max().item<double>());
        CHECK((got[name] - g).abs().max().item<double>() / scale < 1e-12);
      }
    }
  }
}

TEST_CASE("psl options are validated with messages that name the option") {
  auto parse = [](std::map<std::string, std::string> m) {
    return parse_options<PslOptions>(OptionMap("psl", std::move(m)));
  };
  CHECK_NOTHROW(parse({}));
  CHECK_THROWS_WITH_AS(parse({{"data", "both"}}), doctest::Contains("psl.data must be coordinator or worker"), Error);
  CHECK_THROWS_WITH_AS(parse({{"batches", "notebook"}}), doctest::Contains("psl.batches"), Error);
}
