// DP-FedAvg (core/federated/privacy.h explains the mechanism and the accountant), both halves.
//
// Coordinator: the stage brings the round's rule, the noised mean of clipped updates over the
// workers sampled (unweighted), and charges the accountant for every round that took updates.
// dp=server clips and noises here; dp=client tells each worker the clip norm and its share of the
// noise (fields dp.clip, dp.noise_std, dp.seed of fedavg.fit), and the worker clips and noises its
// own update, saying in dp_unclipped whether it was within the norm. Adaptive clipping moves the
// norm every round towards the target quantile of the update norms.
#include <cmath>

#include <torch/torch.h>

#include "core/data/batching.h"
#include "core/data/tensor_checks.h"
#include "strategies/fedavg/fedavg.h"
#include "strategies/fedavg/parts/parts.h"

namespace fedra::fedavg {

namespace {

constexpr const char* kClip = "dp.clip";
constexpr const char* kNoiseStd = "dp.noise_std";
constexpr const char* kSeed = "dp.seed";
constexpr const char* kUnclipped = "dp_unclipped";

class DpStage;

// global + (sum of clipped updates + noise) / sampled, then adaptive clipping's step.
class DpMeanRule : public Rule {
 public:
  explicit DpMeanRule(DpStage& dp) : dp_(dp) {}
  std::string name() const override { return "dp's noised mean"; }
  bool linear() const override { return true; }
  double weight(const WorkerInfo&) const override { return 1.0; }  // each clipped update counts once
  void begin(const Round& round) override;
  void add(const Round& round, const WorkerInfo& worker, FitRes& update) override;
  void add_sum(const Round&, NamedTensors weighted_sum, double, size_t) override { sum_ = std::move(weighted_sum); }
  NamedTensors aggregate(const Round& round) override;
  void discard() override { sum_.clear(); }

 private:
  DpStage& dp_;
  DpMean mean_;
  NamedTensors sum_;  // secure aggregation's sum of the (client-clipped, noised) updates
};

class DpStage : public Stage {
 public:
  explicit DpStage(DpOptions o) : o_(std::move(o)), clip_(o_.dp_clip()) {}
  std::string name() const override { return "dp"; }
  std::string needs_each_update() const override {
    if (o_.dp() == DpMode::kServer) {
      return "under dp=server the coordinator clips each update; use dp=client (each worker clips and noises its "
             "own update: distributed DP, docs/security.md)";
    }
    if (o_.dp_adaptive()) return "adaptive clipping needs each worker's clipped-or-not bit in the clear; use a fixed dp_clip";
    return "";
  }
  std::unique_ptr<Rule> own_rule() override { return std::make_unique<DpMeanRule>(*this); }
  std::string why_own_rule() const override { return "its guarantee is for the noised mean of clipped updates"; }
  void start(const Job&, const NamedTensors&, const torch::nn::Sequential&) override {
    gen_ = dp_generator(o_.dp_seed());
  }
  void configure(const Round& round, const WorkerInfo& worker, Message& fit) override {
    if (o_.dp() != DpMode::kClient) return;
    // Each of the m sampled workers adds N(0, (z_u C)^2 / m): the sum carries N(0, (z_u C)^2).
    const double noise = dp_noise_for(o_, static_cast<int64_t>(round.sampled)).update * clip_ /
                         std::sqrt(static_cast<double>(std::max<size_t>(round.sampled, 1)));
    const uint64_t seed = o_.dp_seed() > 0 ? worker_seed(static_cast<uint64_t>(o_.dp_seed()), round.number, worker.name) : 0;
    fit.options[kClip] = fmt::format("{:.17g}", clip_);
    fit.options[kNoiseStd] = fmt::format("{:.17g}", noise);
    fit.options[kSeed] = std::to_string(seed);
  }
  void check(const Round&, const WorkerInfo& worker, FitRes& update) override {
    if (o_.dp() != DpMode::kClient) return;
    const auto bit = update.extra.find(kUnclipped);
    FEDRA_REQUIRE(bit != update.extra.end() && (bit->second == 0 || bit->second == 1),
                  "rejected update from {}: under dp=client its 'fedavg.fit_result' needs dp_unclipped 0 or 1",
                  worker.name);
  }
  void close(Round& round) override {
    // Charged whenever updates were taken, even if the round then fails: the workers released them.
    if (round.accepted == 0) return;
    const double q = static_cast<double>(round.sampled) / static_cast<double>(std::max(round.connected, round.sampled));
    accountant_.add(q, o_.dp_noise());
  }
  void standing_metrics(const Round&, Metrics& line) const override {
    line.insert(line.end(), {{"dp_epsilon", accountant_.epsilon(o_.dp_delta())},
                             {"dp_delta", o_.dp_delta()},
                             {"dp_noise", o_.dp_noise()},
                             {"dp_clip", clip_}});
    if (o_.dp_adaptive() && last_fraction_ >= 0) line.emplace_back("dp_unclipped_fraction", last_fraction_);
  }
  void save(NamedTensors& state) const override {
    state.emplace_back("dp/rdp", at::tensor(accountant_.rdp(), at::kDouble));
    state.emplace_back("dp/clip", at::tensor({clip_}, at::kDouble));
  }
  void load(NamedTensors& state) override {
    for (auto& [name, t] : take_prefixed(state, "dp/")) {
      if (name == "rdp") {
        const at::Tensor r = t.to(at::kDouble).contiguous();
        accountant_.set_rdp(std::vector<double>(r.data_ptr<double>(), r.data_ptr<double>() + r.numel()));
      } else if (name == "clip") {
        clip_ = t.item<double>();
      }
    }
  }

 private:
  friend class DpMeanRule;
  DpOptions o_;
  double clip_;                // C, this round's
  double unclipped_ = 0;       // updates within C this round
  double last_fraction_ = -1;  // adaptive: the last round's noisy unclipped fraction
  RdpAccountant accountant_;
  at::Generator gen_;
};

void DpMeanRule::begin(const Round& round) {
  mean_.reset(*round.global);
  dp_.unclipped_ = 0;
}

void DpMeanRule::add(const Round&, const WorkerInfo&, FitRes& update) {
  if (dp_.o_.dp() == DpMode::kServer) {
    dp_.unclipped_ += mean_.add(update.weights, dp_.clip_) <= dp_.clip_ ? 1 : 0;
  } else {
    mean_.add(update.weights, 0);  // clipped and noised by the worker
    dp_.unclipped_ += update.extra.at(kUnclipped);
  }
}

NamedTensors DpMeanRule::aggregate(const Round& round) {
  const DpOptions& o = dp_.o_;
  const auto m = static_cast<int64_t>(round.sampled);
  if (!sum_.empty()) {  // secure aggregation (dp=client): the sum of noised updates, over the sampled
    NamedTensors sum = std::move(sum_);
    sum_.clear();
    return linear_aggregate(*round.global, sum, static_cast<double>(std::max<int64_t>(m, 1)));
  }
  const DpNoise noise = dp_noise_for(o, m);
  const double noise_std = o.dp() == DpMode::kServer ? noise.update * dp_.clip_ : 0.0;
  NamedTensors next = mean_.finish(noise_std, static_cast<double>(m), dp_.gen_);
  if (o.dp_adaptive()) {
    const double noisy = dp_.unclipped_ + at::empty({1}, at::kDouble).normal_(0, noise.count, dp_.gen_).item<double>();
    dp_.last_fraction_ = noisy / static_cast<double>(m);
    dp_.clip_ *= std::exp(-o.dp_clip_lr() * (dp_.last_fraction_ - o.dp_quantile()));
  }
  return next;
}

// The worker's half: clips its update to dp.clip and adds N(0, dp.noise_std^2) per coordinate.
class DpWorkerStage : public WorkerStage {
 public:
  void after(LocalFit& fit) override {
    if (!fit.request.options.count(kClip)) return;
    fit.request.require_options({kNoiseStd, kSeed});
    const OptionMap o(kFit, fit.request.options);
    const double clip = o.get_double(kClip, 0), noise_std = o.get_double(kNoiseStd, -1);
    FEDRA_REQUIRE(clip > 0 && noise_std >= 0, "'{}' asks for dp.clip {} and dp.noise_std {}", kFit, clip, noise_std);
    check_layout(fit.ins.weights, fit.result.weights);
    at::Generator gen = dp_generator(o.get_int(kSeed, 0));
    fit.result.extra[kUnclipped] = clip_and_noise(fit.ins.weights, fit.result.weights, clip, noise_std, gen) <= clip;
  }
};

}  // namespace

std::unique_ptr<Stage> dp_stage(const FedAvgOptions& o) {
  return o.privacy().on() ? std::make_unique<DpStage>(o.privacy()) : nullptr;
}

std::unique_ptr<WorkerStage> dp_worker_stage() { return std::make_unique<DpWorkerStage>(); }

}  // namespace fedra::fedavg
