// What fedasync and fedbuff do with an update (strategies/async/internal.h).
#include <algorithm>
#include <cmath>

#include <torch/torch.h>

#include "strategies/async/internal.h"

namespace fedra::async {

NamedTensors mix(const NamedTensors& global, const NamedTensors& w, double a) {
  torch::NoGradGuard no_grad;
  NamedTensors next;
  for (size_t i = 0; i < global.size(); ++i) {
    const at::Tensor& x = global[i].second;
    const at::Tensor& wi = w[i].second;
    next.emplace_back(global[i].first, x.is_floating_point() ? x * (1.0 - a) + wi * a : wi.clone());
  }
  return next;
}

void DeltaBuffer::add(const NamedTensors& global, const NamedTensors& delta, double s) {
  torch::NoGradGuard no_grad;
  if (sum_.empty()) {
    for (const auto& [name, x] : global) sum_.emplace_back(name, at::zeros_like(x, at::kDouble));
  }
  for (size_t i = 0; i < sum_.size(); ++i) {
    const at::Tensor& d = delta[i].second;
    if (d.is_floating_point()) {
      sum_[i].second.add_(d.to(at::kDouble), s);
    } else {
      sum_[i].second.copy_(d);  // integer buffers (batch counts): the latest value
    }
  }
  ++count_;
}

NamedTensors DeltaBuffer::flush(const NamedTensors& global, double lr) {
  torch::NoGradGuard no_grad;
  NamedTensors aggregate;
  for (size_t i = 0; i < global.size(); ++i) {
    const at::Tensor& x = global[i].second;
    if (x.is_floating_point()) {
      aggregate.emplace_back(global[i].first,
                             (x.to(at::kDouble) + sum_[i].second * (lr / static_cast<double>(count_))).to(x.scalar_type()));
    } else {
      aggregate.emplace_back(global[i].first, sum_[i].second.to(x.scalar_type()));
    }
  }
  sum_.clear();
  count_ = 0;
  return aggregate;
}

void Window::add(int64_t tau, double loss, double train_s) {
  staleness_.push_back(static_cast<double>(tau));
  loss_ += loss;
  train_s_ = std::max(train_s_, train_s);
}

void Window::report(Metrics& line) {
  double mean = 0, worst = 0;
  for (double x : staleness_) {
    mean += x;
    worst = std::max(worst, x);
    const size_t b = x < 1 ? 0 : static_cast<size_t>(std::floor(std::log2(x))) + 1;
    hist_[std::min<size_t>(b, hist_.size() - 1)] += 1;
  }
  const auto n = static_cast<double>(std::max<size_t>(staleness_.size(), 1));
  line.emplace_back("train_loss", loss_ / n);
  line.emplace_back("staleness_mean", mean / n);
  line.emplace_back("staleness_max", static_cast<int64_t>(worst));
  line.emplace_back("staleness_hist", hist_);
  line.emplace_back("updates_in_step", static_cast<int64_t>(staleness_.size()));
  staleness_.clear();
  loss_ = 0;
}

double Window::take_train_s() {
  const double t = train_s_;
  train_s_ = 0;
  return t;
}

}  // namespace fedra::async
