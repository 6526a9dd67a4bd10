#include "tests/testing.h"

#include <set>

#include <torch/torch.h>

#include "core/data/partition.h"

using namespace fedra;

namespace {

at::Tensor balanced_labels(int64_t per_class, int64_t classes) {
  return torch::arange(classes, torch::kLong).repeat_interleave(per_class);
}

void check_disjoint_cover(const Partition& p, int64_t n) {
  std::set<int64_t> seen;
  size_t total = 0;
  for (const auto& c : p.clients) {
    total += c.size();
    seen.insert(c.begin(), c.end());
  }
  CHECK(total == seen.size());  // no example in two clients
  CHECK(static_cast<int64_t>(seen.size()) + p.dropped == n);
}

std::set<int64_t> classes_of(const std::vector<int64_t>& idx, const at::Tensor& labels) {
  std::set<int64_t> out;
  for (int64_t i : idx) out.insert(labels[i].item<int64_t>());
  return out;
}

// Mean over clients of the largest single-class share of the client's data.
double mean_top_share(const Partition& p, const at::Tensor& labels, int64_t classes) {
  double sum = 0;
  for (const auto& c : p.clients) {
    std::vector<int64_t> count(static_cast<size_t>(classes), 0);
    for (int64_t i : c) ++count[static_cast<size_t>(labels[i].item<int64_t>())];
    sum += static_cast<double>(*std::max_element(count.begin(), count.end())) / static_cast<double>(c.size());
  }
  return sum / static_cast<double>(p.clients.size());
}

}  // namespace

TEST_CASE("iid gives every client an equal, disjoint share of everything") {
  const at::Tensor labels = balanced_labels(100, 10);
  const Partition p = partition_dataset(labels, 10, "iid", 7, 1);
  REQUIRE(p.clients.size() == 7);
  for (const auto& c : p.clients) CHECK((c.size() == 142 || c.size() == 143));
  check_disjoint_cover(p, 1000);
  CHECK(p.dropped == 0);
}

TEST_CASE("partitions are reproducible from the seed and change with it") {
  const at::Tensor labels = balanced_labels(100, 10);
  for (const char* spec : {"iid", "dirichlet:alpha=0.5", "shards:k=2"}) {
    CAPTURE(spec);
    CHECK(partition_dataset(labels, 10, spec, 5, 42).clients == partition_dataset(labels, 10, spec, 5, 42).clients);
    CHECK(partition_dataset(labels, 10, spec, 5, 42).clients != partition_dataset(labels, 10, spec, 5, 43).clients);
  }
}

TEST_CASE("dirichlet covers every example, and small alpha skews labels more than large alpha") {
  const at::Tensor labels = balanced_labels(600, 10);
  const Partition skewed = partition_dataset(labels, 10, "dirichlet:alpha=0.1", 10, 3);
  const Partition even = partition_dataset(labels, 10, "dirichlet:alpha=100", 10, 3);
  check_disjoint_cover(skewed, 6000);
  check_disjoint_cover(even, 6000);
  const double top_skewed = mean_top_share(skewed, labels, 10);
  const double top_even = mean_top_share(even, labels, 10);
  MESSAGE("mean largest-class share: alpha=0.1 " << top_skewed << ", alpha=100 " << top_even);
  CHECK(top_skewed > 0.5);
  CHECK(top_even < 0.2);
  for (const auto& c : skewed.clients) CHECK(c.size() >= 10);
}

TEST_CASE("shards:k=K gives each client K shards of one size and at most K classes") {
  const at::Tensor labels = balanced_labels(600, 10);
  const Partition p = partition_dataset(labels, 10, "shards:k=2", 10, 5);
  check_disjoint_cover(p, 6000);
  for (const auto& c : p.clients) {
    CHECK(c.size() == 600);
    CHECK(classes_of(c, labels).size() <= 2);
  }
  const Partition q = partition_dataset(balanced_labels(101, 10), 10, "shards:k=3", 3, 5);
  CHECK(q.dropped == 1010 - 9 * (1010 / 9));
}

TEST_CASE("bad partition specs say what is wrong") {
  const at::Tensor labels = balanced_labels(10, 10);
  CHECK_THROWS_WITH_AS(partition_dataset(labels, 10, "dirichlet", 2, 1), doctest::Contains("needs alpha"), fedra::Error);
  CHECK_THROWS_WITH_AS(partition_dataset(labels, 10, "dirichlet:alpha=-1", 2, 1), doctest::Contains("must be > 0"), fedra::Error);
  CHECK_THROWS_WITH_AS(partition_dataset(labels, 10, "random", 2, 1), doctest::Contains("unknown partition 'random'"), fedra::Error);
  CHECK_THROWS_WITH_AS(partition_dataset(labels, 10, "iid", 101, 1), doctest::Contains("cannot split 100 examples among 101"), fedra::Error);
  CHECK_THROWS_WITH_AS(partition_dataset(labels, 10, "shards:k=20", 10, 1), doctest::Contains("needs 200 shards"), fedra::Error);
}
