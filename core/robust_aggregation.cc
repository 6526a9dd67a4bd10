#include "core/robust_aggregation.h"

#include <algorithm>
#include <cmath>
#include <numeric>

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

// For each floating tensor, `rule` of the stacked column; integer tensors from the first update.
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
    out.emplace_back(updates[0][i].first, rule(column(updates, i)).to(first.scalar_type()).contiguous());
  }
  return out;
}

}  // namespace

NamedTensors coordinate_median(const std::vector<NamedTensors>& updates) {
  return per_tensor(updates, [](const at::Tensor& stack) {
    const int64_t n = stack.size(0);
    if (n % 2 == 1) return std::get<0>(stack.median(0));
    // Even: the mean of the two middle values (numpy's median), not torch's lower middle.
    const at::Tensor lower = std::get<0>(stack.kthvalue(n / 2, 0));
    const at::Tensor upper = std::get<0>(stack.kthvalue(n / 2 + 1, 0));
    return (lower.to(at::kDouble) + upper.to(at::kDouble)) / 2;
  });
}

NamedTensors trimmed_mean(const std::vector<NamedTensors>& updates, double beta) {
  const auto n = static_cast<int64_t>(updates.size());
  const auto k = static_cast<int64_t>(std::floor(beta * static_cast<double>(n)));
  FEDRA_REQUIRE(n - 2 * k >= 1, "trimmed_mean with beta {} drops all {} updates", beta, n);
  return per_tensor(updates, [&](const at::Tensor& stack) {
    const at::Tensor sorted = std::get<0>(stack.sort(0));
    return sorted.narrow(0, k, n - 2 * k).to(at::kDouble).mean(0);
  });
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
  return per_tensor(chosen, [](const at::Tensor& stack) { return stack.to(at::kDouble).mean(0); });
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

double clip_to_norm(const NamedTensors& global, NamedTensors& update, double c) {
  torch::NoGradGuard no_grad;
  double sq = 0;
  for (size_t i = 0; i < global.size(); ++i) {
    if (!at::isFloatingType(global[i].second.scalar_type())) continue;
    sq += (update[i].second.to(at::kDouble) - global[i].second.to(at::kDouble)).pow(2).sum().item<double>();
  }
  const double norm = std::sqrt(sq);
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
