// Simulated device fleets and round deadlines for the FedAvg family (core/federated/fleet.h).
//
// clock=virtual: the coordinator computes each update's duration (its steps on the device, the
// model's transfer both ways) and judges it in simulated seconds: a device that goes offline
// before it would finish loses its update, one past round_deadline is dropped (its work wasted),
// and the round lasts as long as its slowest accepted update. clock=wall: the worker sleeps its
// device's slowdown and transfer for real (fields fleet.sleep_factor and fleet.net_s of
// fedavg.fit), and the coordinator measures. Either way devices offline when a round begins are
// not asked.
#include <algorithm>
#include <chrono>
#include <map>

#include <torch/torch.h>

#include "strategies/fedavg/fedavg.h"
#include "strategies/fedavg/parts/parts.h"
#include "strategies/run_message.h"

namespace fedra::fedavg {

namespace {

constexpr const char* kSleepFactor = "fleet.sleep_factor";
constexpr const char* kNetS = "fleet.net_s";

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

class FleetStage : public Stage {
 public:
  FleetStage(FleetOptions o, double round_deadline, double round_timeout)
      : o_(std::move(o)), deadline_(round_deadline), timeout_(round_timeout) {}
  std::string name() const override { return deadline_ > 0 && o_.fleet() == "none" ? "round_deadline" : "fleet"; }
  std::string needs_each_update() const override { return "the coordinator times each update it takes"; }
  void start(const Job& job, const NamedTensors&, const torch::nn::Sequential&) override {
    fleet_ = std::make_unique<Fleet>(o_.fleet(), job.seed);
  }

  void select(Round& round, const std::vector<WorkerInfo>& connected, std::vector<WorkerId>& chosen) override {
    if (!started_) {
      started_ = true;
      wall_start_ = std::chrono::steady_clock::now();
    }
    round_start_ = now();
    span_ = 0;
    late_ = lost_ = offline_ = 0;
    (void)round;
    // Devices the fleet has offline when the round begins are not asked.
    std::map<WorkerId, std::string> names;
    for (const WorkerInfo& w : connected) names[w.id] = w.name;
    std::vector<WorkerId> online;
    for (WorkerId id : chosen) {
      if (fleet_->online(names[id], round_start_)) {
        online.push_back(id);
      } else {
        ++offline_;
      }
    }
    chosen = std::move(online);
  }

  void configure(const Round& round, const WorkerInfo& worker, Message& fit) override {
    if (!fleet_->active() || o_.virtual_clock()) return;
    fit.metrics[kSleepFactor] = std::max(0.0, fleet_->profile(worker.name).slowdown - 1.0);
    fit.metrics[kNetS] = fleet_->network_s(worker.name, round.model_bytes, round.model_bytes);
  }

  // A device's update: its duration (simulated from its steps, or measured), then whether it went
  // offline first (lost) or missed the round deadline (late, virtual clock).
  void check(const Round& round, const WorkerInfo& worker, FitRes& update) override {
    const double t = round_start_;
    if (!o_.virtual_clock()) {
      const double at = now();
      device_[worker.name] += at - t;
      if (fleet_->offline_at(worker.name, t) < at) {
        ++lost_;
        FEDRA_FAIL("{} went offline (fleet churn) while it trained: its update is lost", worker.name);
      }
      span_ = std::max(span_, at - t);
      return;
    }
    const double d = fleet_->compute_s(worker.name, update.steps) +
                     fleet_->network_s(worker.name, round.model_bytes, round.model_bytes);
    const double off = fleet_->offline_at(worker.name, t) - t;
    if (off < d && (deadline_ == 0 || off < deadline_)) {
      ++lost_;
      device_[worker.name] += off;
      FEDRA_FAIL("{} went offline {:.1f} simulated seconds into its {:.1f} s update (fleet churn): the update is lost",
                 worker.name, off, d);
    }
    if (deadline_ > 0 && d > deadline_) {
      ++late_;
      device_[worker.name] += deadline_;
      FEDRA_FAIL("{}'s update takes {:.1f} simulated seconds, past round_deadline {} s: dropped, its work wasted",
                 worker.name, d, deadline_);
    }
    device_[worker.name] += d;
    span_ = std::max(span_, d);
  }

  void close(Round&) override {
    // Summed in name order, not arrival order, so the total does not depend on which process ran faster.
    for (const auto& [name, seconds] : device_) device_s_ += seconds;
    device_.clear();
    if (!o_.virtual_clock()) return;
    // The round lasts as long as its slowest accepted update, or until the deadline when one was
    // late; a device lost to churn keeps it waiting until the deadline, or round_timeout.
    double span = span_;
    if (late_ > 0) span = std::max(span, deadline_);
    if (lost_ > 0) span = std::max(span, deadline_ > 0 ? deadline_ : timeout_);
    now_ += span;
  }

  void standing_metrics(const Round&, Metrics& line) const override {
    line.insert(line.end(), {{"virtual_time_s", o_.virtual_clock() ? now() : 0.0},
                             {"fleet_time_s", now()},
                             {"device_s", device_s_},
                             {"updates_late", late_},
                             {"updates_lost", lost_},
                             {"workers_offline", offline_}});
  }

  void save(NamedTensors& state) const override {
    state.emplace_back("fleet/state", at::tensor({now(), device_s_}, at::kDouble));
  }
  void load(NamedTensors& state) override {
    for (auto& [name, t] : take_prefixed(state, "fleet/")) {
      if (name != "state" || t.numel() != 2) continue;
      const at::Tensor v = t.to(at::kDouble).contiguous();
      now_ = v.data_ptr<double>()[0];  // the clock continues where the checkpoint left it
      device_s_ = v.data_ptr<double>()[1];
    }
  }

 private:
  // The fleet's clock: simulated seconds (virtual), or the checkpointed time plus the wall time
  // since the first round (wall).
  double now() const { return now_ + (!o_.virtual_clock() && started_ ? seconds_since(wall_start_) : 0.0); }

  FleetOptions o_;
  double deadline_, timeout_;
  std::unique_ptr<Fleet> fleet_;
  double now_ = 0, round_start_ = 0, span_ = 0, device_s_ = 0;
  std::map<std::string, double> device_;  // this round's device seconds by worker
  int64_t late_ = 0, lost_ = 0, offline_ = 0;
  std::chrono::steady_clock::time_point wall_start_;
  bool started_ = false;
};

// The worker's half on the wall clock: after training, sleep sleep_factor times the training time
// plus net_s (this device is slower, and its link takes time).
class FleetWorkerStage : public WorkerStage {
 public:
  void after(LocalFit& fit) override {
    const double factor = fit.request.metric_or(kSleepFactor, 0), net_s = fit.request.metric_or(kNetS, 0);
    FEDRA_REQUIRE(factor >= 0 && net_s >= 0 && net_s < 1e6, "'{}' asks to sleep {} x training + {} s", kFit, factor,
                  net_s);
    sleep_as_device(factor, fit.train_s, net_s);
  }
};

}  // namespace

std::unique_ptr<Stage> fleet_stage(const FedAvgOptions& o) {
  if (o.fleet().fleet() == "none" && o.round_deadline() == 0) return nullptr;
  return std::make_unique<FleetStage>(o.fleet(), o.round_deadline(), o.round_timeout());
}

std::unique_ptr<WorkerStage> fleet_worker_stage() { return std::make_unique<FleetWorkerStage>(); }

}  // namespace fedra::fedavg
