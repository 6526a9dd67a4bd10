#include "tests/testing.h"

#include <algorithm>

#include <torch/torch.h>

#include "core/federated/aggregation.h"

using namespace fedra;

namespace {

NamedTensors update(float w, float b) {
  return {{"fc.weight", torch::full({2, 3}, w)}, {"fc.bias", torch::full({2}, b)}};
}

}  // namespace

TEST_CASE("fedavg weights clients by example count") {
  WeightedAverage avg;
  avg.add(update(1, 10), 100);   // 100 examples
  avg.add(update(4, 40), 300);   // 300 examples
  avg.add(update(-2, 0), 600);   // 600 examples
  CHECK(avg.count() == 3);
  CHECK(avg.total_weight() == 1000);
  const NamedTensors out = avg.take_average();
  // (1*100 + 4*300 - 2*600) / 1000 = 0.1 and (10*100 + 40*300 + 0) / 1000 = 13
  CHECK(torch::allclose(out[0].second, torch::full({2, 3}, 0.1f)));
  CHECK(torch::allclose(out[1].second, torch::full({2}, 13.0f)));
  CHECK(avg.count() == 0);
}

TEST_CASE("equal weights give the plain mean, and one result gives itself") {
  WeightedAverage avg;
  avg.add(update(2, 2), 5);
  avg.add(update(6, 4), 5);
  CHECK(torch::allclose(avg.take_average()[0].second, torch::full({2, 3}, 4.0f)));
  avg.add(update(3, 7), 42);
  const NamedTensors one = avg.take_average();
  CHECK(torch::equal(one[1].second, torch::full({2}, 7.0f)));
}

TEST_CASE("a rejected update leaves the running sum untouched") {
  WeightedAverage avg;
  avg.add(update(1, 1), 10);
  NamedTensors bad_shape = {{"fc.weight", torch::ones({3, 2})}, {"fc.bias", torch::ones({2})}};
  CHECK_THROWS_WITH_AS(avg.add(bad_shape, 10),
                       "update tensor 'fc.weight' is float32[3,2], the model's is float32[2,3]", fedra::Error);
  NamedTensors nan = update(1, 1);
  nan[1].second[0] = std::nanf("");
  CHECK_THROWS_WITH_AS(avg.add(nan, 10), "update tensor 'fc.bias' holds NaN or infinite values", fedra::Error);
  NamedTensors inf = update(1, 1);
  inf[0].second[1][1] = INFINITY;
  CHECK_THROWS_AS(avg.add(inf, 10), fedra::Error);
  CHECK_THROWS_WITH_AS(avg.add(update(1, 1), 0), "update weight must be > 0, got 0", fedra::Error);
  NamedTensors renamed = {{"other.weight", torch::ones({2, 3})}, {"fc.bias", torch::ones({2})}};
  CHECK_THROWS_WITH_AS(avg.add(renamed, 1), "update tensor #0 is 'other.weight', the model's is 'fc.weight'",
                       fedra::Error);
  avg.add(update(3, 3), 30);
  CHECK(avg.count() == 2);
  CHECK(torch::allclose(avg.take_average()[0].second, torch::full({2, 3}, 2.5f)));
}

TEST_CASE("the average reuses the previous model's memory only when nothing else holds it") {
  WeightedAverage avg;
  avg.add(update(1, 1), 1);
  NamedTensors first = avg.take_average();
  const void* first_memory = first[0].second.data_ptr();
  avg.recycle(std::move(first));
  avg.add(update(2, 2), 1);
  NamedTensors second = avg.take_average();
  CHECK(second[0].second.data_ptr() == first_memory);  // reused
  CHECK(torch::equal(second[0].second, torch::full({2, 3}, 2.0f)));

  NamedTensors held = second;  // a frame still being written would hold a reference like this
  avg.recycle(std::move(second));
  avg.add(update(3, 3), 1);
  NamedTensors third = avg.take_average();
  CHECK(third[0].second.data_ptr() != held[0].second.data_ptr());  // not overwritten under a reader
  CHECK(torch::equal(held[0].second, torch::full({2, 3}, 2.0f)));
}

TEST_CASE("the average does not depend on the order updates arrive in") {
  torch::manual_seed(11);
  std::vector<NamedTensors> updates;
  std::vector<double> weights;
  for (int i = 0; i < 10; ++i) {
    updates.push_back({{"w", torch::randn({100000}) * std::pow(10.0f, static_cast<float>(i % 5 - 2))},
                       {"b", torch::randn({7}, torch::kFloat64)}});
    weights.push_back(1000 + 613 * i);
  }
  std::vector<int> order(10);
  for (int i = 0; i < 10; ++i) order[static_cast<size_t>(i)] = i;
  NamedTensors reference;
  for (int trial = 0; trial < 20; ++trial) {
    WeightedAverage avg;
    for (int i : order) avg.add(updates[static_cast<size_t>(i)], weights[static_cast<size_t>(i)]);
    NamedTensors out = avg.take_average();
    if (trial == 0) {
      reference = out;
    } else {
      CHECK(torch::equal(out[0].second, reference[0].second));  // float32: bit for bit
      CHECK(torch::allclose(out[1].second, reference[1].second, 0, 1e-12));
    }
    std::next_permutation(order.begin(), order.end());
    std::reverse(order.begin() + trial % 5, order.end());
  }
}
