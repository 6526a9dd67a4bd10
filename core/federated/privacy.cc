#include "core/federated/privacy.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

namespace fedra {

void DpOptions::validate(const std::string& scope) const {
  FEDRA_REQUIRE(dp_noise_ >= 0, "{}.dp_noise must be >= 0, got {}", scope, dp_noise_);
  FEDRA_REQUIRE(dp_clip_ > 0, "{}.dp_clip must be > 0, got {}", scope, dp_clip_);
  FEDRA_REQUIRE(dp_quantile_ >= 0 && dp_quantile_ <= 1, "{}.dp_quantile must be in [0, 1], got {}", scope,
                dp_quantile_);
  FEDRA_REQUIRE(dp_clip_lr_ >= 0, "{}.dp_clip_lr must be >= 0, got {}", scope, dp_clip_lr_);
  FEDRA_REQUIRE(dp_count_noise_ >= 0, "{}.dp_count_noise must be >= 0 (0: sampled / 20), got {}", scope,
                dp_count_noise_);
  FEDRA_REQUIRE(dp_delta_ > 0 && dp_delta_ < 1, "{}.dp_delta must be in (0, 1), got {}", scope, dp_delta_);
  FEDRA_REQUIRE(dp_seed_ >= 0, "{}.dp_seed must be >= 0 (0: from the operating system), got {}", scope, dp_seed_);
}

DpNoise dp_noise_for(const DpOptions& o, int64_t sampled) {
  const double z = o.dp_noise();
  if (!o.dp_adaptive() || z == 0) return {z, 0};
  const double sb = o.dp_count_noise() > 0 ? o.dp_count_noise() : static_cast<double>(sampled) / 20.0;
  FEDRA_REQUIRE(2 * sb > z,
                "dp_adaptive with dp_noise {} needs the count noise above z / 2, but it is {} ({}); raise "
                "dp_count_noise, sample more workers, or lower dp_noise",
                z, sb, o.dp_count_noise() > 0 ? "dp_count_noise" : "sampled workers / 20");
  return {1.0 / std::sqrt(1.0 / (z * z) - 1.0 / (4 * sb * sb)), sb};
}

namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

double log_add(double a, double b) {
  if (a == kNegInf) return b;
  if (b == kNegInf) return a;
  const double hi = std::max(a, b);
  return hi + std::log1p(std::exp(std::min(a, b) - hi));
}

// A signed quantity kept as (sign, log |value|), so that series with terms of both signs and of
// very different sizes add up without overflow.
struct SignedLog {
  int sign = 0;  // 0: the value is zero
  double log = kNegInf;

  void add(int term_sign, double term_log) {
    if (term_log == kNegInf || term_sign == 0) return;
    if (sign == 0) {
      sign = term_sign;
      log = term_log;
    } else if (sign == term_sign) {
      log = log_add(log, term_log);
    } else if (term_log > log) {
      sign = term_sign;
      log = term_log + std::log1p(-std::exp(log - term_log));
    } else if (term_log < log) {
      log = log + std::log1p(-std::exp(term_log - log));
    } else {
      sign = 0;
      log = kNegInf;
    }
  }
};

// log(erfc(x)), accurate where erfc underflows (x large): the asymptotic series.
double log_erfc(double x) {
  if (x < 25) return std::log(std::erfc(x));
  const double x2 = x * x;
  return -x2 - std::log(x) - 0.5 * std::log(M_PI) + std::log1p(-1 / (2 * x2) + 3 / (4 * x2 * x2));
}

// log A_alpha for an integer alpha: sum_k C(alpha, k) (1-q)^(alpha-k) q^k exp((k^2 - k) / (2 s^2)).
double log_a_integer(double q, double sigma, int64_t alpha) {
  double log_a = kNegInf;
  for (int64_t k = 0; k <= alpha; ++k) {
    const double log_binom =
        std::lgamma(static_cast<double>(alpha + 1)) - std::lgamma(static_cast<double>(k + 1)) -
        std::lgamma(static_cast<double>(alpha - k + 1));
    const auto kd = static_cast<double>(k);
    const double term = log_binom + kd * std::log(q) + (static_cast<double>(alpha) - kd) * std::log1p(-q) +
                        (kd * kd - kd) / (2 * sigma * sigma);
    log_a = log_add(log_a, term);
  }
  return log_a;
}

// log A_alpha for a fractional alpha: the two series of Mironov et al. 2019 (section 3.3), split at
// z0 = s^2 log(1/q - 1) + 1/2, with generalised binomial coefficients (of both signs).
double log_a_fractional(double q, double sigma, double alpha) {
  SignedLog a0, a1;
  const double z0 = sigma * sigma * std::log(1 / q - 1) + 0.5;
  int coef_sign = 1;
  double log_coef = 0;  // log |C(alpha, i)|, built up as C(alpha, i+1) = C(alpha, i) (alpha - i) / (i + 1)
  for (int64_t i = 0;; ++i) {
    const auto id = static_cast<double>(i);
    const double j = alpha - id;
    const double log_t0 = log_coef + id * std::log(q) + j * std::log1p(-q);
    const double log_t1 = log_coef + j * std::log(q) + id * std::log1p(-q);
    const double log_e0 = std::log(0.5) + log_erfc((id - z0) / (std::sqrt(2.0) * sigma));
    const double log_e1 = std::log(0.5) + log_erfc((z0 - j) / (std::sqrt(2.0) * sigma));
    const double log_s0 = log_t0 + (id * id - id) / (2 * sigma * sigma) + log_e0;
    const double log_s1 = log_t1 + (j * j - j) / (2 * sigma * sigma) + log_e1;
    a0.add(coef_sign, log_s0);
    a1.add(coef_sign, log_s1);
    if (std::max(log_s0, log_s1) < -30 && id > alpha) break;
    FEDRA_REQUIRE(i < 100000, "the RDP series for q {} sigma {} alpha {} does not converge", q, sigma, alpha);
    const double factor = alpha - id;
    if (factor == 0) break;  // an integer alpha reached: every further coefficient is zero
    if (factor < 0) coef_sign = -coef_sign;
    log_coef += std::log(std::abs(factor)) - std::log(id + 1);
  }
  SignedLog total = a0;
  total.add(a1.sign, a1.log);
  FEDRA_REQUIRE(total.sign > 0, "the RDP series for q {} sigma {} alpha {} lost its precision", q, sigma, alpha);
  return total.log;
}

}  // namespace

double sampled_gaussian_rdp(double q, double noise_multiplier, double alpha) {
  FEDRA_REQUIRE(q >= 0 && q <= 1, "sampling rate must be in [0, 1], got {}", q);
  FEDRA_REQUIRE(alpha > 1, "RDP order must be > 1, got {}", alpha);
  if (q == 0) return 0;
  if (noise_multiplier == 0) return std::numeric_limits<double>::infinity();
  if (q == 1) return alpha / (2 * noise_multiplier * noise_multiplier);
  const double log_a = std::floor(alpha) == alpha
                           ? log_a_integer(q, noise_multiplier, static_cast<int64_t>(alpha))
                           : log_a_fractional(q, noise_multiplier, alpha);
  return log_a / (alpha - 1);
}

const std::vector<double>& RdpAccountant::orders() {
  static const std::vector<double> kOrders = [] {
    std::vector<double> o;
    for (int x = 1; x < 100; ++x) o.push_back(1 + x / 10.0);
    for (int a = 11; a <= 64; ++a) o.push_back(a);
    o.push_back(128);
    o.push_back(256);
    return o;
  }();
  return kOrders;
}

void RdpAccountant::add(double q, double noise_multiplier, int64_t steps) {
  const auto& a = orders();
  for (size_t i = 0; i < a.size(); ++i) {
    rdp_[i] += static_cast<double>(steps) * sampled_gaussian_rdp(q, noise_multiplier, a[i]);
  }
}

double RdpAccountant::epsilon(double delta, double* best_order) const {
  FEDRA_REQUIRE(delta > 0 && delta < 1, "delta must be in (0, 1), got {}", delta);
  const auto& a = orders();
  if (std::all_of(rdp_.begin(), rdp_.end(), [](double r) { return r == 0; })) return 0;  // nothing released
  double best = std::numeric_limits<double>::infinity();
  for (size_t i = 0; i < a.size(); ++i) {
    const double eps = rdp_[i] + std::log((a[i] - 1) / a[i]) - (std::log(delta) + std::log(a[i])) / (a[i] - 1);
    if (eps < best) {
      best = eps;
      if (best_order != nullptr) *best_order = a[i];
    }
  }
  return std::max(0.0, best);
}

void RdpAccountant::set_rdp(std::vector<double> rdp) {
  FEDRA_REQUIRE(rdp.size() == orders().size(), "the privacy accountant's state has {} orders, expected {}",
                rdp.size(), orders().size());
  rdp_ = std::move(rdp);
}

void DpMean::reset(const NamedTensors& global) {
  global_ = global;
  sum_.assign(global.size(), at::Tensor());
}

double DpMean::add(const NamedTensors& weights, double clip) {
  torch::NoGradGuard no_grad;
  const double norm = update_norm(global_, weights);
  const double scale = clip > 0 && norm > clip ? clip / norm : 1.0;
  for (size_t i = 0; i < global_.size(); ++i) {
    const at::Tensor& g = global_[i].second;
    if (!at::isFloatingType(g.scalar_type())) continue;
    const at::Tensor u = (weights[i].second.to(at::kDouble) - g.to(at::kDouble)) * scale;
    sum_[i] = sum_[i].defined() ? sum_[i].add_(u) : u;
  }
  return norm;
}

NamedTensors DpMean::finish(double noise_std, double denominator, at::Generator& gen) {
  torch::NoGradGuard no_grad;
  FEDRA_REQUIRE(denominator > 0, "DP mean over {} workers", denominator);
  NamedTensors next;
  for (size_t i = 0; i < global_.size(); ++i) {
    const auto& [name, g] = global_[i];
    if (!at::isFloatingType(g.scalar_type())) {
      next.emplace_back(name, g.clone());
      continue;
    }
    at::Tensor sum = sum_[i].defined() ? sum_[i] : at::zeros(g.sizes(), g.options().dtype(at::kDouble));
    if (noise_std > 0) sum = sum + at::empty(g.sizes(), sum.options()).normal_(0, noise_std, gen);
    next.emplace_back(name, (g.to(at::kDouble) + sum / denominator).to(g.scalar_type()));
  }
  sum_.assign(global_.size(), at::Tensor());
  return next;
}

double clip_and_noise(const NamedTensors& global, NamedTensors& weights, double clip, double noise_std,
                      at::Generator& gen) {
  torch::NoGradGuard no_grad;
  const double norm = clip_to_norm(global, weights, clip);
  if (noise_std > 0) {
    for (size_t i = 0; i < global.size(); ++i) {
      at::Tensor& w = weights[i].second;
      if (!at::isFloatingType(w.scalar_type())) continue;
      w = (w.to(at::kDouble) + at::empty(w.sizes(), w.options().dtype(at::kDouble)).normal_(0, noise_std, gen))
              .to(w.scalar_type());
    }
  }
  return norm;
}

at::Generator dp_generator(int64_t seed) {
  uint64_t s = static_cast<uint64_t>(seed);
  if (s == 0) {
    std::random_device device;
    s = (static_cast<uint64_t>(device()) << 32) | device();
  }
  return at::make_generator<at::CPUGeneratorImpl>(s);
}

}  // namespace fedra
