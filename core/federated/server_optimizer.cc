#include "core/federated/server_optimizer.h"

#include <cmath>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/torch.h>

namespace fedra {

void ServerOptOptions::validate(const std::string& scope) const {
  FEDRA_REQUIRE(server_lr_ >= 0, "{}.server_lr must be >= 0 (0: the optimiser's default), got {}", scope, server_lr_);
  FEDRA_REQUIRE(server_momentum_ >= 0 && server_momentum_ < 1, "{}.server_momentum must be in [0, 1), got {}", scope,
                server_momentum_);
  FEDRA_REQUIRE(server_beta1_ >= 0 && server_beta1_ < 1, "{}.server_beta1 must be in [0, 1), got {}", scope,
                server_beta1_);
  FEDRA_REQUIRE(server_beta2_ >= 0 && server_beta2_ < 1, "{}.server_beta2 must be in [0, 1), got {}", scope,
                server_beta2_);
  FEDRA_REQUIRE(server_tau_ > 0, "{}.server_tau must be > 0, got {}", scope, server_tau_);
}

double ServerOptOptions::effective_lr() const {
  if (server_lr_ > 0) return server_lr_;
  return server_opt_ == ServerOpt::kMomentum ? 1.0 : 0.01;
}

namespace {

// The adaptive optimisers' step for one float32 tensor in a single pass over x, a (holding Delta),
// m and v, instead of one pass per ATen operation: the step is bound by memory, and this reads
// four model-sized tensors and writes three once. Same arithmetic, in float, as the ATen path
// below (which handles other dtypes and non-contiguous tensors). Returns false if it cannot.
bool fused_adaptive_step(ServerOpt opt, const at::Tensor& x, at::Tensor& a, at::Tensor& m, at::Tensor& v, double lr,
                         double beta1, double beta2, double tau) {
  for (const at::Tensor* t : {&x, static_cast<const at::Tensor*>(&a), static_cast<const at::Tensor*>(&m),
                              static_cast<const at::Tensor*>(&v)}) {
    if (t->scalar_type() != at::kFloat || !t->is_contiguous()) return false;
  }
  const float* px = x.data_ptr<float>();
  float* pa = a.data_ptr<float>();
  float* pm = m.data_ptr<float>();
  float* pv = v.data_ptr<float>();
  const auto b1 = static_cast<float>(beta1), b2 = static_cast<float>(beta2);
  const auto rate = static_cast<float>(lr), eps = static_cast<float>(tau);
  const auto run = [&](auto second_moment) {
    at::parallel_for(0, x.numel(), 1 << 16, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const float d = pa[i];  // Delta = aggregate - global
        const float mi = pm[i] * b1 + d * (1 - b1);
        const float vi = second_moment(pv[i], d * d);
        pm[i] = mi;
        pv[i] = vi;
        pa[i] = px[i] + rate * (mi / (std::sqrt(vi) + eps));
      }
    });
  };
  switch (opt) {
    case ServerOpt::kAdagrad: run([](float vi, float sq) { return vi + sq; }); return true;
    case ServerOpt::kAdam: run([b2](float vi, float sq) { return vi * b2 + sq * (1 - b2); }); return true;
    case ServerOpt::kYogi:
      run([b2](float vi, float sq) {
        const float diff = vi - sq;
        const float sign = static_cast<float>((diff > 0) - (diff < 0));
        return vi - sq * sign * (1 - b2);
      });
      return true;
    default: return false;
  }
}

}  // namespace

void ServerOptimizer::step(const NamedTensors& global, NamedTensors& aggregate) {
  if (o_.server_opt() == ServerOpt::kNone) return;
  FEDRA_ASSERT(global.size() == aggregate.size(), "server optimiser: {} global tensors, {} aggregated",
               global.size(), aggregate.size());
  torch::NoGradGuard no_grad;
  const bool momentum = o_.server_opt() == ServerOpt::kMomentum;  // keeps a velocity (v_) only
  const bool first = v_.empty();
  const double lr = o_.effective_lr();
  const double b1 = o_.server_beta1(), b2 = o_.server_beta2();
  size_t k = 0;  // index into m_ and v_: the floating-point tensors, in order
  for (size_t i = 0; i < global.size(); ++i) {
    const at::Tensor& x = global[i].second;
    at::Tensor& a = aggregate[i].second;
    if (!at::isFloatingType(x.scalar_type())) continue;  // integer buffers: the aggregate as it is
    if (first) {
      if (!momentum) m_.emplace_back(global[i].first, at::zeros_like(x));
      v_.emplace_back(global[i].first, at::zeros_like(x));
    }
    FEDRA_REQUIRE(k < v_.size() && v_[k].first == global[i].first && v_[k].second.sizes() == x.sizes() &&
                      (momentum || k < m_.size()),
                  "the server optimiser's state does not fit the model at '{}'", global[i].first);
    at::Tensor& v = v_[k].second;
    a.sub_(x);  // a holds Delta = aggregate - global from here on
    if (momentum) {
      ++k;
      v.mul_(o_.server_momentum()).sub_(a);  // v <- mu v + d, with d = -Delta
      a.copy_(x).sub_(v, lr);
      continue;
    }
    at::Tensor& m = m_[k++].second;
    if (fused_adaptive_step(o_.server_opt(), x, a, m, v, lr, b1, b2, o_.server_tau())) continue;
    m.mul_(b1).add_(a, 1 - b1);
    const at::Tensor sq = a * a;
    switch (o_.server_opt()) {
      case ServerOpt::kAdagrad: v.add_(sq); break;
      case ServerOpt::kAdam: v.mul_(b2).add_(sq, 1 - b2); break;
      case ServerOpt::kYogi: v.sub_(sq * at::sign(v - sq), 1 - b2); break;
      default: FEDRA_ASSERT(false, "unhandled server optimiser");
    }
    a.copy_(x).addcdiv_(m, v.sqrt().add_(o_.server_tau()), lr);
  }
}

NamedTensors ServerOptimizer::state() const {
  NamedTensors out;
  for (const auto& [name, t] : m_) out.emplace_back("server_opt/m/" + name, t.clone());
  for (const auto& [name, t] : v_) out.emplace_back("server_opt/v/" + name, t.clone());
  return out;
}

void ServerOptimizer::load_state(const NamedTensors& state) {
  m_.clear();
  v_.clear();
  for (const auto& [name, t] : state) {
    if (name.rfind("server_opt/m/", 0) == 0) m_.emplace_back(name.substr(13), t.clone());
    else if (name.rfind("server_opt/v/", 0) == 0) v_.emplace_back(name.substr(13), t.clone());
    else FEDRA_FAIL("'{}' is not server optimiser state (server_opt/m/NAME or server_opt/v/NAME)", name);
  }
  FEDRA_REQUIRE(m_.empty() || m_.size() == v_.size(), "server optimiser state: {} first moments but {} second",
                m_.size(), v_.size());
}

}  // namespace fedra
