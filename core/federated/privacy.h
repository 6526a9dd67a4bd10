// Differential privacy for the FedAvg family: the options, the clipped and noised mean, and a
// Renyi-DP accountant for the sampled Gaussian mechanism (docs/privacy.md).
//
// The mechanism is DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private Recurrent
// Language Models"): each round every sampled worker's update u = w - global is clipped to L2 norm
// C (over all floating-point tensors, buffers included), the clipped updates are summed, Gaussian
// noise N(0, (z C)^2) is added to the sum, and the sum is divided by the number of workers sampled
// (not the number that answered, so one worker moves the mean by at most C / m). With
// `dp=server` the coordinator clips and adds the noise; with `dp=client` every worker clips its
// own update and adds its share N(0, (z C)^2 / m), so the coordinator never holds an un-noised
// update and the sum carries the same noise as long as every sampled worker answers (distributed
// DP, the form secure aggregation needs).
//
// Adaptive clipping (Andrew et al. 2021, "Differentially Private Learning with Adaptive
// Clipping"): C follows the target quantile g of the update norms, C <- C exp(-eta (b - g)), b
// being the noisy fraction of updates that were within C (noise N(0, s_b^2) on their count). The
// update noise is then raised to z_u = (z^-2 - (2 s_b)^-2)^-1/2, so that the pair is as private as
// one Gaussian mechanism with noise multiplier z, which is what the accountant charges.
//
// The accountant (Mironov et al. 2017 and 2019, "Renyi Differential Privacy of the Sampled
// Gaussian Mechanism") adds, every round, the RDP of the sampled Gaussian mechanism at sampling
// rate q = sampled / connected workers and noise multiplier z at a fixed set of orders, and turns
// the total into epsilon at delta with the conversion of Balle et al. 2020 (as Opacus does):
// eps = min over orders a of rdp(a) + log((a - 1) / a) - (log delta + log a) / (a - 1).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Generator.h>

#include "core/federated/robust_aggregation.h"
#include "core/kit/message.h"
#include "core/kit/options.h"

namespace fedra {

enum class DpMode { kOff, kServer, kClient };
FEDRA_ENUM_NAMES(DpMode, {DpMode::kOff, "off"}, {DpMode::kServer, "server"}, {DpMode::kClient, "client"})

struct DpOptions {
  FEDRA_ARG(DpMode, dp) = DpMode::kOff;
  FEDRA_ARG(double, dp_noise) = 1.0;
  FEDRA_ARG(double, dp_clip) = 1.0;
  FEDRA_ARG(bool, dp_adaptive) = false;
  FEDRA_ARG(double, dp_quantile) = 0.5;
  FEDRA_ARG(double, dp_clip_lr) = 0.2;
  FEDRA_ARG(double, dp_count_noise) = 0;
  FEDRA_ARG(double, dp_delta) = 1e-5;
  FEDRA_ARG(int64_t, dp_seed) = 0;

  template <class F>
  void visit(F&& f) {
    f("dp", dp_,
      "differential privacy (DP-FedAvg): off; server (the coordinator clips every update and adds the "
      "noise); client (each worker clips its own update and adds its share of the noise)");
    f("dp_noise", dp_noise_, "z: the noise multiplier; the sum of clipped updates gets N(0, (z C)^2)");
    f("dp_clip", dp_clip_, "C: the L2 norm every update is clipped to (the initial C with dp_adaptive)");
    f("dp_adaptive", dp_adaptive_, "adapt C to a quantile of the update norms (Andrew et al. 2021)");
    f("dp_quantile", dp_quantile_, "dp_adaptive: the target fraction of updates within C");
    f("dp_clip_lr", dp_clip_lr_, "dp_adaptive: eta in C <- C exp(-eta (unclipped fraction - quantile))");
    f("dp_count_noise", dp_count_noise_,
      "dp_adaptive: the noise's standard deviation on the count of unclipped updates; 0 = sampled / 20");
    f("dp_delta", dp_delta_, "delta at which the accountant reports epsilon");
    f("dp_seed", dp_seed_,
      "seed of the noise; 0 = fresh from the operating system every run (anything else makes the noise "
      "reproducible, and so removable by whoever knows the seed: for experiments only)");
  }
  void validate(const std::string& scope) const;
  bool on() const { return dp_ != DpMode::kOff; }
};

// The noise multipliers of one round with m workers sampled: z_u on the update sum and s_b on the
// unclipped count (0 without dp_adaptive). Throws if dp_adaptive's count noise leaves no budget
// for the updates (2 s_b <= z), saying what to raise.
struct DpNoise {
  double update = 0;
  double count = 0;
};
DpNoise dp_noise_for(const DpOptions& o, int64_t sampled);

// Renyi DP of one application of the sampled Gaussian mechanism (sensitivity 1, noise z, sampling
// rate q) at order alpha > 1: log(A_alpha) / (alpha - 1) with A_alpha the binomial series for an
// integer alpha and the two-sided series with erfc terms for a fractional one (Mironov et al. 2019,
// section 3.3). q = 1: alpha / (2 z^2); q = 0: 0.
double sampled_gaussian_rdp(double q, double noise_multiplier, double alpha);

class RdpAccountant {
 public:
  // Orders 1.1, 1.2, ..., 10.9, 11, 12, ..., 64, 128, 256 (about Opacus's set, plus two large ones).
  static const std::vector<double>& orders();

  void add(double q, double noise_multiplier, int64_t steps = 1);
  // The smallest epsilon over the orders at `delta` (Balle et al. 2020's conversion), and the
  // order that gives it. Zero while nothing was added (the conversion alone would give a small
  // positive bound).
  double epsilon(double delta, double* best_order = nullptr) const;
  const std::vector<double>& rdp() const { return rdp_; }
  void set_rdp(std::vector<double> rdp);  // from a checkpoint

 private:
  std::vector<double> rdp_ = std::vector<double>(orders().size(), 0.0);
};

// Sums clipped updates u = w - global (floating-point tensors; integer ones keep the global
// model's values) and turns the sum into the next model: global + (sum + noise) / denominator.
class DpMean {
 public:
  void reset(const NamedTensors& global);
  // Adds one result; with `clip` > 0 the update is first scaled down to that L2 norm. Returns the
  // update's norm before clipping.
  double add(const NamedTensors& weights, double clip);
  // global + (sum + N(0, noise_std^2) per coordinate) / denominator; `gen` draws the noise.
  NamedTensors finish(double noise_std, double denominator, at::Generator& gen);

 private:
  NamedTensors global_;
  std::vector<at::Tensor> sum_;  // float64, one per tensor (undefined for integer ones)
};

// Clips w - global to norm C in place (clip_to_norm) and adds N(0, noise_std^2) to every
// floating coordinate of w; returns the norm before clipping.
double clip_and_noise(const NamedTensors& global, NamedTensors& weights, double clip, double noise_std,
                      at::Generator& gen);

// A generator for DP noise: seeded from `seed`, or from std::random_device when seed is 0.
at::Generator dp_generator(int64_t seed);

}  // namespace fedra
