// Fleets: how fast, how well connected and how available each simulated device is.
//
// A fleet gives every client (by name) a DeviceProfile drawn from a seeded distribution or read
// from a file, so that the same job seed and client names give the same fleet on every run:
//
//   none                                  every device as fast as the machine running it
//   lognormal:sigma=S                     compute slowdown ~ LogNormal(0, S): the median device is
//                                         the reference, the slowest tenth at least e^(1.2816 S)
//                                         (sigma=1.8: 10x) slower
//   stragglers:fraction=F,slowdown=X      a seeded F of the devices X times slower, the rest 1
//   PATH.csv  (or csv:path=PATH)          one row per device: name,slowdown,latency_s,mbps,online_s,
//                                         offline_s; a row named * is the default for the others
// Every distribution also takes
//   step=S      the reference device's seconds per local optimiser step (simulated clock; 0.05)
//   latency=S   one-way network latency per message, seconds (0)
//   mbps=B      link bandwidth in megabit/s (0: unlimited); net_sigma=S spreads it LogNormal(0, S)
//   online=S,offline=S   churn: each device alternates online and offline periods drawn
//               exponentially with these means, starting in a seeded draw of the two (0: always on)
//
// What a fleet means depends on the clock (FleetOptions::clock):
//   virtual  nothing sleeps: an update's duration is steps * step * slowdown plus the model's
//            transfer both ways, and strategies advance a simulated clock by it (reproducible
//            bit for bit from the seed)
//   wall     the same fleet for real: a worker sleeps (slowdown - 1) times its measured compute
//            time plus the transfer time, and availability follows wall time since the job began
// Strategies that know fleets: fedavg (and its variants), fedasync, fedbuff (docs/fleets.md).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/kit/options.h"

namespace fedra {

enum class ClockMode { kWall, kVirtual };
FEDRA_ENUM_NAMES(ClockMode, {ClockMode::kWall, "wall"}, {ClockMode::kVirtual, "virtual"})

struct FleetOptions {
  FEDRA_ARG(std::string, fleet) = "none";
  FEDRA_ARG(ClockMode, clock) = ClockMode::kWall;

  template <class F>
  void visit(F&& f) {
    f("fleet", fleet_,
      "simulated device fleet: none, lognormal:sigma=S, stragglers:fraction=F,slowdown=X or a CSV file, each "
      "with step=, latency=, mbps=, online=, offline= (docs/fleets.md)");
    f("clock", clock_,
      "wall (the fleet's delays are slept for real) or virtual (they advance a simulated clock: no sleeping, "
      "reproducible from the seed)");
  }
  void validate(const std::string& scope) const;
  bool virtual_clock() const { return clock_ == ClockMode::kVirtual; }
};

struct DeviceProfile {
  double slowdown = 1;   // compute time multiplier against the reference device
  double latency_s = 0;  // one-way latency per message
  double mbps = 0;       // link bandwidth, megabit/s; 0 = unlimited
  double online_s = 0;   // churn: mean online period (0: always online)
  double offline_s = 0;  // churn: mean offline period
};

class Fleet {
 public:
  Fleet() = default;  // "none"
  // Throws fedra::Error naming what is wrong with `spec` (unknown distribution, option or file row).
  Fleet(const std::string& spec, uint64_t seed);

  bool active() const { return kind_ != Kind::kNone; }
  const std::string& spec() const { return spec_; }
  double step_s() const { return step_s_; }

  // The device's profile (drawn once per name from the seed; a CSV row or its default).
  DeviceProfile profile(const std::string& name) const;
  // Reference-device compute seconds for `steps` steps, times the device's slowdown.
  double compute_s(const std::string& name, int64_t steps) const;
  // Seconds to move `bytes_down` to the device and `bytes_up` back: two latencies plus the bytes
  // at the device's bandwidth.
  double network_s(const std::string& name, uint64_t bytes_down, uint64_t bytes_up) const;

  // Availability at time t (seconds of the fleet's clock since the job began).
  bool online(const std::string& name, double t) const;
  // The first time >= t at which the device is offline (infinity if it never churns).
  double offline_at(const std::string& name, double t) const;
  // The first time >= t at which it is online (t if it is).
  double online_at(const std::string& name, double t) const;

 private:
  enum class Kind { kNone, kLogNormal, kStragglers, kCsv };
  struct Timeline {
    bool starts_online = true;
    std::vector<double> toggles;  // times at which the state flips, increasing
    uint64_t rng = 0;
  };
  DeviceProfile draw(const std::string& name) const;
  // The timeline extended past t.
  const Timeline& timeline(const std::string& name, const DeviceProfile& p, double t) const;

  Kind kind_ = Kind::kNone;
  std::string spec_ = "none";
  uint64_t seed_ = 0;
  double step_s_ = 0.05;
  DeviceProfile common_;           // latency, bandwidth and churn shared by the distribution
  double sigma_ = 0, net_sigma_ = 0, fraction_ = 0, straggler_slowdown_ = 1;
  std::map<std::string, DeviceProfile> rows_;  // CSV
  mutable std::mutex mu_;
  mutable std::map<std::string, DeviceProfile> profiles_;
  mutable std::map<std::string, Timeline> timelines_;
};

// A 64-bit hash of a device name mixed with a seed (FNV-1a then splitmix64), stable across
// platforms; the fleet's draws for a device start from it.
uint64_t device_seed(uint64_t seed, const std::string& name);

// splitmix64: advances `state` and returns the next 64-bit value (platform-independent draws).
uint64_t splitmix64(uint64_t& state);

// A worker under a wall-clock fleet, after training for `trained_s`: sleeps as the slower device
// and its link would have taken, sleep_factor * trained_s + net_s (no-op when both are 0); returns
// the seconds slept.
double sleep_as_device(double sleep_factor, double trained_s, double net_s);

}  // namespace fedra
