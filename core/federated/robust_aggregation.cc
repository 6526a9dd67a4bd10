#include "core/federated/robust_aggregation.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include <ATen/Parallel.h>
#include <torch/torch.h>

namespace fedra {

void RobustOptions::validate(const std::string& scope) const {
  FEDRA_REQUIRE(trim_beta_ >= 0 && trim_beta_ < 0.5, "{}.trim_beta must be in [0, 0.5), got {}", scope, trim_beta_);
  FEDRA_REQUIRE(krum_f_ >= 0, "{}.krum_f must be >= 0, got {}", scope, krum_f_);
  FEDRA_REQUIRE(krum_m_ >= 0, "{}.krum_m must be >= 0 (0: workers - f), got {}", scope, krum_m_);
  FEDRA_REQUIRE(clip_norm_ >= 0, "{}.clip_norm must be >= 0 (0: off), got {}", scope, clip_norm_);
  FEDRA_REQUIRE(hold_budget_mb_ > 0, "{}.hold_budget_mb must be > 0, got {}", scope, hold_budget_mb_);
}

namespace {

// Tensor i of every update, stacked along a new first dimension.
at::Tensor column(const std::vector<NamedTensors>& updates, size_t i) {
  std::vector<at::Tensor> parts;
  parts.reserve(updates.size());
  for (const auto& u : updates) parts.push_back(u[i].second);
  return at::stack(parts);
}

// For each floating tensor i, rule(i) in that tensor's dtype; integer tensors from the first update.
template <class Rule>
NamedTensors per_tensor(const std::vector<NamedTensors>& updates, Rule rule) {
  FEDRA_REQUIRE(!updates.empty(), "no updates to aggregate");
  NamedTensors out;
  for (size_t i = 0; i < updates[0].size(); ++i) {
    const at::Tensor& first = updates[0][i].second;
    if (!at::isFloatingType(first.scalar_type())) {
      out.emplace_back(updates[0][i].first, first);
      continue;
    }
    out.emplace_back(updates[0][i].first, rule(i).to(first.scalar_type()).contiguous());
  }
  return out;
}

constexpr int64_t kBlock = 1024;     // coordinates per block: the working set stays in L1
constexpr int64_t kMaxFewTrim = 4;   // trimmed means dropping up to this many at each end

// A trimmed mean dropping k values at each end, for coordinates [begin, end) (at most kBlock):
// the sum of all n values minus the k least and the k greatest. Those are kept per coordinate in
// two sorted lists updated by branch-free min/max exchanges, and the loops run over a block of
// coordinates with each update read as one sequential stream, so the compiler vectorises them
// and the kernel runs at memory speed: no sort, no copy of the n values.
void trimmed_block(const std::vector<const float*>& src, int64_t k, int64_t begin, int64_t end, float* dst) {
  const int64_t len = end - begin;
  const auto n = static_cast<int64_t>(src.size());
  alignas(64) double sum[kBlock];
  alignas(64) float least[kMaxFewTrim][kBlock];
  alignas(64) float most[kMaxFewTrim][kBlock];
  for (int64_t c = 0; c < len; ++c) sum[c] = 0;
  for (int64_t t = 0; t < k; ++t) {
    for (int64_t c = 0; c < len; ++c) {
      least[t][c] = std::numeric_limits<float>::infinity();
      most[t][c] = -std::numeric_limits<float>::infinity();
    }
  }
  for (int64_t j = 0; j < n; ++j) {
    const float* x = src[static_cast<size_t>(j)] + begin;
    for (int64_t c = 0; c < len; ++c) sum[c] += x[c];
    for (int64_t c = 0; c < len; ++c) {
      float lo = x[c], hi = x[c];
      for (int64_t t = 0; t < k; ++t) {
        const float a = std::min(least[t][c], lo);
        lo = std::max(least[t][c], lo);
        least[t][c] = a;
        const float b = std::max(most[t][c], hi);
        hi = std::min(most[t][c], hi);
        most[t][c] = b;
      }
    }
  }
  const double keep = static_cast<double>(n - 2 * k);
  for (int64_t c = 0; c < len; ++c) {
    double s = sum[c];
    for (int64_t t = 0; t < k; ++t) s -= static_cast<double>(least[t][c]) + static_cast<double>(most[t][c]);
    dst[begin + c] = static_cast<float>(s / keep);
  }
}

// The mean of sorted values [lo, hi) of every coordinate across the updates, for tensor i. For
// float32 it works coordinate by coordinate on the updates' own memory (an insertion sort of the
// n values, no stacked copy: the n inputs are read as n sequential streams), in parallel over
// blocks of coordinates; other dtypes go through a stacked torch sort. A trimmed mean that drops
// few values goes through trimmed_block.
NamedTensors sorted_window_mean(const std::vector<NamedTensors>& updates, int64_t lo, int64_t hi) {
  const auto n = static_cast<int64_t>(updates.size());
  return per_tensor(updates, [&](size_t i) {
    const at::Tensor& first = updates[0][i].second;
    if (first.scalar_type() != at::kFloat) {
      const at::Tensor sorted = std::get<0>(column(updates, i).sort(0));
      return sorted.narrow(0, lo, hi - lo).to(at::kDouble).mean(0);
    }
    std::vector<at::Tensor> inputs;
    std::vector<const float*> src;
    for (const auto& u : updates) {
      inputs.push_back(u[i].second.contiguous());
      src.push_back(inputs.back().data_ptr<float>());
    }
    at::Tensor result = at::empty(first.sizes(), first.options());
    float* dst = result.data_ptr<float>();
    const bool trimmed = lo == n - hi && lo <= kMaxFewTrim;
    at::parallel_for(0, first.numel(), kBlock, [&](int64_t begin, int64_t end) {
      if (trimmed) {
        for (int64_t b = begin; b < end; b += kBlock) trimmed_block(src, lo, b, std::min(end, b + kBlock), dst);
        return;
      }
      // Otherwise (the median): an insertion sort of the n values per coordinate, n the workers.
      std::vector<float> buffer(static_cast<size_t>(n));
      float* v = buffer.data();
      for (int64_t c = begin; c < end; ++c) {
        for (int64_t j = 0; j < n; ++j) {
          const float x = src[static_cast<size_t>(j)][c];
          int64_t p = j;
          for (; p > 0 && v[p - 1] > x; --p) v[p] = v[p - 1];
          v[p] = x;
        }
        double sum = 0;
        for (int64_t j = lo; j < hi; ++j) sum += v[j];
        dst[c] = static_cast<float>(sum / static_cast<double>(hi - lo));
      }
    });
    return result;
  });
}

}  // namespace

NamedTensors coordinate_median(const std::vector<NamedTensors>& updates) {
  // Odd n: the middle value; even n: the mean of the two middle values (numpy's median).
  const auto n = static_cast<int64_t>(updates.size());
  return n % 2 == 1 ? sorted_window_mean(updates, n / 2, n / 2 + 1) : sorted_window_mean(updates, n / 2 - 1, n / 2 + 1);
}

NamedTensors trimmed_mean(const std::vector<NamedTensors>& updates, double beta) {
  const auto n = static_cast<int64_t>(updates.size());
  const auto k = static_cast<int64_t>(std::floor(beta * static_cast<double>(n)));
  FEDRA_REQUIRE(n - 2 * k >= 1, "trimmed_mean with beta {} drops all {} updates", beta, n);
  return sorted_window_mean(updates, k, n - k);
}

std::vector<double> krum_scores(const std::vector<NamedTensors>& updates, int64_t f) {
  const auto n = static_cast<int64_t>(updates.size());
  at::Tensor d2 = at::zeros({n, n}, at::kDouble);  // squared distances between whole updates
  for (size_t i = 0; i < updates[0].size(); ++i) {
    if (!at::isFloatingType(updates[0][i].second.scalar_type())) continue;
    const at::Tensor flat = column(updates, i).reshape({n, -1}).to(at::kDouble);
    const at::Tensor sq = (flat * flat).sum(1);
    d2 += sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * at::matmul(flat, flat.t());
  }
  d2.clamp_min_(0);
  const int64_t neighbours = std::max<int64_t>(n - f - 2, 1);
  std::vector<double> scores(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    std::vector<double> row;
    for (int64_t j = 0; j < n; ++j) {
      if (j != i) row.push_back(d2[i][j].item<double>());
    }
    std::sort(row.begin(), row.end());
    scores[static_cast<size_t>(i)] = std::accumulate(row.begin(), row.begin() + std::min<int64_t>(neighbours, n - 1), 0.0);
  }
  return scores;
}

std::vector<size_t> krum_select(const std::vector<NamedTensors>& updates, int64_t f, int64_t m) {
  const auto n = static_cast<int64_t>(updates.size());
  FEDRA_REQUIRE(n >= 2 * f + 3, "krum with krum_f = {} needs at least {} updates, the round has {}", f, 2 * f + 3, n);
  const std::vector<double> scores = krum_scores(updates, f);
  std::vector<size_t> order(updates.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return scores[a] < scores[b]; });
  order.resize(static_cast<size_t>(std::clamp<int64_t>(m, 1, n)));
  return order;
}

NamedTensors plain_mean(const std::vector<NamedTensors>& updates, const std::vector<size_t>& which) {
  std::vector<NamedTensors> chosen;
  for (size_t i : which) chosen.push_back(updates[i]);
  return per_tensor(chosen, [&](size_t i) { return column(chosen, i).to(at::kDouble).mean(0); });
}

NamedTensors robust_aggregate(const RobustOptions& o, const std::vector<NamedTensors>& updates) {
  switch (o.aggregate()) {
    case Aggregator::kMedian: return coordinate_median(updates);
    case Aggregator::kTrimmedMean: return trimmed_mean(updates, o.trim_beta());
    case Aggregator::kKrum: return plain_mean(updates, krum_select(updates, o.krum_f(), 1));
    case Aggregator::kMultiKrum: {
      const auto n = static_cast<int64_t>(updates.size());
      return plain_mean(updates, krum_select(updates, o.krum_f(), o.krum_m() > 0 ? o.krum_m() : n - o.krum_f()));
    }
    case Aggregator::kMean: break;
  }
  std::vector<size_t> all(updates.size());
  std::iota(all.begin(), all.end(), 0);
  return plain_mean(updates, all);
}

double update_norm(const NamedTensors& global, const NamedTensors& update) {
  torch::NoGradGuard no_grad;
  double sq = 0;
  for (size_t i = 0; i < global.size(); ++i) {
    if (!at::isFloatingType(global[i].second.scalar_type())) continue;
    sq += (update[i].second.to(at::kDouble) - global[i].second.to(at::kDouble)).pow(2).sum().item<double>();
  }
  return std::sqrt(sq);
}

double clip_to_norm(const NamedTensors& global, NamedTensors& update, double c) {
  torch::NoGradGuard no_grad;
  const double norm = update_norm(global, update);
  if (c > 0 && norm > c) {
    const double scale = c / norm;
    for (size_t i = 0; i < global.size(); ++i) {
      if (!at::isFloatingType(global[i].second.scalar_type())) continue;
      const at::Tensor& g = global[i].second;
      update[i].second = (g + (update[i].second - g) * scale).to(g.scalar_type());
    }
  }
  return norm;
}

}  // namespace fedra
