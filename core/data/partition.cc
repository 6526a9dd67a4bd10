#include "core/data/partition.h"

#include <algorithm>
#include <numeric>
#include <random>

#include "core/kit/options.h"

namespace fedra {

namespace {

std::vector<int64_t> to_vector(const at::Tensor& t) {
  at::Tensor c = t.to(at::kLong).contiguous();
  const int64_t* p = c.data_ptr<int64_t>();
  return std::vector<int64_t>(p, p + c.numel());
}

// 0 .. n-1 in an order drawn from `rng`.
std::vector<int64_t> shuffled_indices(int64_t n, std::mt19937_64& rng) {
  std::vector<int64_t> out(static_cast<size_t>(n));
  std::iota(out.begin(), out.end(), 0);
  std::shuffle(out.begin(), out.end(), rng);
  return out;
}

Partition iid(int64_t n, int64_t clients, std::mt19937_64& rng) {
  const std::vector<int64_t> perm = shuffled_indices(n, rng);
  Partition p;
  p.clients.resize(static_cast<size_t>(clients));
  for (int64_t c = 0; c < clients; ++c) {
    const int64_t begin = n * c / clients;
    const int64_t end = n * (c + 1) / clients;
    p.clients[static_cast<size_t>(c)].assign(perm.begin() + begin, perm.begin() + end);
  }
  return p;
}

Partition dirichlet(const std::vector<int64_t>& labels, int64_t num_classes, int64_t clients,
                    double alpha, int64_t min_size, std::mt19937_64& rng) {
  std::vector<std::vector<int64_t>> by_class(static_cast<size_t>(num_classes));
  for (size_t i = 0; i < labels.size(); ++i) {
    by_class[static_cast<size_t>(labels[i])].push_back(static_cast<int64_t>(i));
  }
  std::gamma_distribution<double> gamma(alpha, 1.0);
  for (int attempt = 0; attempt < 100; ++attempt) {
    Partition p;
    p.clients.resize(static_cast<size_t>(clients));
    for (auto idx : by_class) {
      std::shuffle(idx.begin(), idx.end(), rng);
      std::vector<double> share(static_cast<size_t>(clients));
      double total = 0;
      for (auto& s : share) total += (s = gamma(rng));
      // Cumulative cut points over this class's examples.
      double acc = 0;
      size_t begin = 0;
      for (int64_t c = 0; c < clients; ++c) {
        acc += share[static_cast<size_t>(c)];
        const size_t end = c + 1 == clients
                               ? idx.size()
                               : static_cast<size_t>(static_cast<double>(idx.size()) * acc / total);
        auto& dst = p.clients[static_cast<size_t>(c)];
        dst.insert(dst.end(), idx.begin() + static_cast<int64_t>(begin),
                   idx.begin() + static_cast<int64_t>(std::max(begin, end)));
        begin = std::max(begin, end);
      }
    }
    const bool ok = std::all_of(p.clients.begin(), p.clients.end(), [&](const auto& c) {
      return static_cast<int64_t>(c.size()) >= min_size;
    });
    if (ok) return p;
  }
  FEDRA_FAIL("dirichlet partition: no draw in 100 gave every one of {} clients at least {} "
             "examples; use a larger alpha, fewer clients or a smaller min_size",
             clients, min_size);
}

Partition shards(const std::vector<int64_t>& labels, int64_t clients, int64_t k,
                 std::mt19937_64& rng) {
  const auto n = static_cast<int64_t>(labels.size());
  const int64_t num_shards = clients * k;
  FEDRA_REQUIRE(num_shards <= n, "shards:k={} needs {} shards but there are only {} examples", k,
                num_shards, n);
  std::vector<int64_t> order = shuffled_indices(n, rng);  // random order within each class
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return labels[static_cast<size_t>(a)] < labels[static_cast<size_t>(b)];
  });
  const int64_t shard_size = n / num_shards;
  const std::vector<int64_t> shard_ids = shuffled_indices(num_shards, rng);
  Partition p;
  p.clients.resize(static_cast<size_t>(clients));
  for (int64_t s = 0; s < num_shards; ++s) {
    const int64_t shard = shard_ids[static_cast<size_t>(s)];
    auto& dst = p.clients[static_cast<size_t>(s / k)];
    dst.insert(dst.end(), order.begin() + shard * shard_size,
               order.begin() + (shard + 1) * shard_size);
  }
  p.dropped = n - num_shards * shard_size;
  return p;
}

}  // namespace

void check_partition_spec(const std::string& spec_text) {
  const Spec spec = parse_spec(spec_text, "partition");
  if (spec.name == "iid" || spec.name == "full") {
    spec.args.require_known({});
  } else if (spec.name == "dirichlet") {
    spec.args.require_known({"alpha", "min_size"});
    FEDRA_REQUIRE(spec.args.has("alpha"), "dirichlet partition needs alpha, e.g. dirichlet:alpha=0.3");
    const double alpha = spec.args.get_double("alpha", 0);
    FEDRA_REQUIRE(alpha > 0, "dirichlet alpha must be > 0, got {}", alpha);
    FEDRA_REQUIRE(spec.args.get_int("min_size", 0) >= 0, "dirichlet min_size must be >= 0, got {}",
                  spec.args.get_int("min_size", 0));
  } else if (spec.name == "shards") {
    spec.args.require_known({"k"});
    const int64_t k = spec.args.get_int("k", 2);
    FEDRA_REQUIRE(k >= 1, "shards:k must be >= 1, got {}", k);
  } else {
    FEDRA_FAIL("unknown partition '{}'; use iid, dirichlet:alpha=A, shards:k=K or full", spec.name);
  }
}

Partition partition_dataset(const at::Tensor& targets, int64_t num_classes,
                            const std::string& spec_text, int64_t num_clients, uint64_t seed) {
  FEDRA_REQUIRE(num_clients >= 1, "partition needs at least one client, got {}", num_clients);
  check_partition_spec(spec_text);
  const Spec spec = parse_spec(spec_text, "partition");
  const std::vector<int64_t> labels = to_vector(targets);
  const auto n = static_cast<int64_t>(labels.size());
  FEDRA_REQUIRE(num_clients <= n, "cannot split {} examples among {} clients", n, num_clients);
  std::mt19937_64 rng(seed);
  Partition p;
  if (spec.name == "iid") {
    p = iid(n, num_clients, rng);
  } else if (spec.name == "dirichlet") {
    const double alpha = spec.args.get_double("alpha", 0);
    const int64_t min_size = spec.args.get_int("min_size", std::min<int64_t>(10, n / num_clients));
    for (int64_t l : labels) {
      FEDRA_REQUIRE(l >= 0 && l < num_classes, "label {} outside 0..{}", l, num_classes - 1);
    }
    p = dirichlet(labels, num_classes, num_clients, alpha, min_size, rng);
  } else if (spec.name == "shards") {
    const int64_t k = spec.args.get_int("k", 2);
    p = shards(labels, num_clients, k, rng);
  } else if (spec.name == "full") {
    std::vector<int64_t> all(static_cast<size_t>(n));
    std::iota(all.begin(), all.end(), int64_t{0});
    p.clients.assign(static_cast<size_t>(num_clients), all);
  }
  for (auto& c : p.clients) std::sort(c.begin(), c.end());
  return p;
}

}  // namespace fedra
