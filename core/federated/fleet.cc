#include "core/federated/fleet.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>
#include <thread>

namespace fedra {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// Uniform in (0, 1): never 0, so log() is finite.
double uniform(uint64_t& state) { return (static_cast<double>(splitmix64(state) >> 11) + 0.5) * 0x1.0p-53; }

// Standard normal by Box-Muller: platform-independent, unlike std::normal_distribution.
double normal(uint64_t& state) {
  const double u1 = uniform(state), u2 = uniform(state);
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}

double exponential(uint64_t& state, double mean) { return -mean * std::log(uniform(state)); }

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

double parse_number(const std::string& text, const std::string& what) {
  try {
    size_t used = 0;
    const double v = std::stod(text, &used);
    if (used == text.size() && std::isfinite(v)) return v;
  } catch (const std::exception&) {
  }
  FEDRA_FAIL("{}: '{}' is not a number", what, text);
}

void check_profile(const DeviceProfile& p, const std::string& where) {
  FEDRA_REQUIRE(p.slowdown > 0, "{}: slowdown must be > 0, got {}", where, p.slowdown);
  FEDRA_REQUIRE(p.latency_s >= 0 && p.mbps >= 0 && p.online_s >= 0 && p.offline_s >= 0,
                "{}: latency, mbps, online and offline must be >= 0", where);
  FEDRA_REQUIRE((p.online_s > 0) == (p.offline_s > 0),
                "{}: churn needs both online and offline (mean seconds), or neither", where);
}

}  // namespace

uint64_t splitmix64(uint64_t& state) {
  uint64_t x = (state += 0x9E3779B97F4A7C15ULL);
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

double sleep_as_device(double sleep_factor, double trained_s, double net_s) {
  const double s = sleep_factor * trained_s + net_s;
  if (s > 0) std::this_thread::sleep_for(std::chrono::duration<double>(s));
  return std::max(s, 0.0);
}

uint64_t device_seed(uint64_t seed, const std::string& name) {
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : name) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  uint64_t s = h ^ (seed * 0xD1B54A32D192ED03ULL);
  return splitmix64(s);
}

void FleetOptions::validate(const std::string& scope) const {
  // A fleet file is read by the coordinator's Fleet only: workers (which parse the same options)
  // need not have it, and the coordinator does not read it twice.
  if (ends_with(fleet_, ".csv") || fleet_.rfind("csv:", 0) == 0) return;
  try {
    Fleet check(fleet_, 1);
  } catch (const Error& e) {
    FEDRA_FAIL("{}.fleet: {}", scope, e.what());
  }
}

Fleet::Fleet(const std::string& spec, uint64_t seed) : spec_(spec), seed_(seed) {
  if (spec.empty() || spec == "none") {
    spec_ = "none";
    return;
  }
  std::string csv_path;
  OptionMap args("fleet");
  if (ends_with(spec, ".csv")) {
    csv_path = spec;
  } else {
    Spec s = parse_spec(spec, "fleet");
    args = s.args;
    if (s.name == "lognormal") {
      kind_ = Kind::kLogNormal;
    } else if (s.name == "stragglers") {
      kind_ = Kind::kStragglers;
    } else if (s.name == "csv") {
      csv_path = args.get_string("path", "");
      FEDRA_REQUIRE(!csv_path.empty(), "fleet csv: give the file as csv:path=FILE");
    } else {
      FEDRA_FAIL("unknown fleet '{}': use none, lognormal:sigma=S, stragglers:fraction=F,slowdown=X or a .csv file",
                 s.name);
    }
  }
  std::vector<std::string> known = {"step", "latency", "mbps", "net_sigma", "online", "offline"};
  if (kind_ == Kind::kLogNormal) known.push_back("sigma");
  if (kind_ == Kind::kStragglers) {
    known.push_back("fraction");
    known.push_back("slowdown");
  }
  if (!csv_path.empty()) {
    kind_ = Kind::kCsv;
    known.push_back("path");
  }
  args.require_known(known);
  step_s_ = args.get_double("step", 0.05);
  FEDRA_REQUIRE(step_s_ > 0, "fleet: step (seconds per local step) must be > 0, got {}", step_s_);
  common_.latency_s = args.get_double("latency", 0);
  common_.mbps = args.get_double("mbps", 0);
  common_.online_s = args.get_double("online", 0);
  common_.offline_s = args.get_double("offline", 0);
  net_sigma_ = args.get_double("net_sigma", 0);
  FEDRA_REQUIRE(net_sigma_ >= 0, "fleet: net_sigma must be >= 0");
  check_profile(common_, "fleet");
  if (kind_ == Kind::kLogNormal) {
    sigma_ = args.get_double("sigma", 1.0);
    FEDRA_REQUIRE(sigma_ >= 0 && sigma_ <= 5, "fleet lognormal: sigma must be in [0, 5], got {}", sigma_);
  } else if (kind_ == Kind::kStragglers) {
    fraction_ = args.get_double("fraction", 0.1);
    straggler_slowdown_ = args.get_double("slowdown", 10);
    FEDRA_REQUIRE(fraction_ >= 0 && fraction_ <= 1, "fleet stragglers: fraction must be in [0, 1], got {}", fraction_);
    FEDRA_REQUIRE(straggler_slowdown_ > 0, "fleet stragglers: slowdown must be > 0, got {}", straggler_slowdown_);
  } else if (kind_ == Kind::kCsv) {
    std::ifstream in(csv_path);
    FEDRA_REQUIRE(in, "fleet file {} cannot be read (does it exist?)", csv_path);
    std::string line;
    int64_t number = 0;
    const std::vector<std::string> header = {"name", "slowdown", "latency_s", "mbps", "online_s", "offline_s"};
    while (std::getline(in, line)) {
      ++number;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.empty() || line[0] == '#') continue;
      std::vector<std::string> cells;
      std::stringstream ss(line);
      std::string cell;
      while (std::getline(ss, cell, ',')) cells.push_back(cell);
      if (cells.size() >= 1 && cells[0] == "name") continue;  // the header
      const std::string where = fmt::format("fleet file {} line {}", csv_path, number);
      FEDRA_REQUIRE(cells.size() >= 2 && cells.size() <= 6,
                    "{}: expected name,slowdown[,latency_s,mbps,online_s,offline_s], got {} field(s)", where,
                    cells.size());
      DeviceProfile p = common_;
      double* fields[] = {&p.slowdown, &p.latency_s, &p.mbps, &p.online_s, &p.offline_s};
      for (size_t i = 1; i < cells.size(); ++i) {
        if (!cells[i].empty()) *fields[i - 1] = parse_number(cells[i], where + " " + header[i]);
      }
      check_profile(p, where);
      FEDRA_REQUIRE(rows_.emplace(cells[0], p).second, "{}: device {} is listed twice", where, cells[0]);
    }
    FEDRA_REQUIRE(!rows_.empty(), "fleet file {} lists no devices (name,slowdown,... per line)", csv_path);
  }
}

DeviceProfile Fleet::draw(const std::string& name) const {
  DeviceProfile p = common_;
  uint64_t rng = device_seed(seed_, name);
  switch (kind_) {
    case Kind::kNone: return DeviceProfile{};
    case Kind::kLogNormal: p.slowdown = std::exp(sigma_ * normal(rng)); break;
    case Kind::kStragglers: p.slowdown = uniform(rng) < fraction_ ? straggler_slowdown_ : 1.0; break;
    case Kind::kCsv: {
      auto it = rows_.find(name);
      if (it == rows_.end()) it = rows_.find("*");
      FEDRA_REQUIRE(it != rows_.end(), "fleet file lists no device {} and no default row '*'", name);
      return it->second;
    }
  }
  if (net_sigma_ > 0 && p.mbps > 0) p.mbps /= std::exp(net_sigma_ * normal(rng));
  return p;
}

DeviceProfile Fleet::profile(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = profiles_.find(name);
  if (it == profiles_.end()) it = profiles_.emplace(name, draw(name)).first;
  return it->second;
}

double Fleet::compute_s(const std::string& name, int64_t steps) const {
  return static_cast<double>(steps) * step_s_ * profile(name).slowdown;
}

double Fleet::network_s(const std::string& name, uint64_t bytes_down, uint64_t bytes_up) const {
  const DeviceProfile p = profile(name);
  double s = 2 * p.latency_s;
  if (p.mbps > 0) s += static_cast<double>(bytes_down + bytes_up) * 8.0 / (p.mbps * 1e6);
  return s;
}

const Fleet::Timeline& Fleet::timeline(const std::string& name, const DeviceProfile& p, double t) const {
  auto it = timelines_.find(name);
  if (it == timelines_.end()) {
    Timeline tl;
    tl.rng = device_seed(seed_ ^ 0xC4u, name);
    tl.starts_online = uniform(tl.rng) * (p.online_s + p.offline_s) < p.online_s;  // the stationary odds
    it = timelines_.emplace(name, std::move(tl)).first;
  }
  Timeline& tl = it->second;
  while (tl.toggles.empty() || tl.toggles.back() <= t) {
    const bool on = tl.starts_online == (tl.toggles.size() % 2 == 0);
    const double last = tl.toggles.empty() ? 0.0 : tl.toggles.back();
    tl.toggles.push_back(last + exponential(tl.rng, on ? p.online_s : p.offline_s));
  }
  return tl;
}

bool Fleet::online(const std::string& name, double t) const {
  const DeviceProfile p = profile(name);
  if (p.online_s <= 0) return true;
  std::lock_guard<std::mutex> lock(mu_);
  const Timeline& tl = timeline(name, p, t);
  size_t flips = 0;
  while (flips < tl.toggles.size() && tl.toggles[flips] <= t) ++flips;
  return tl.starts_online == (flips % 2 == 0);
}

double Fleet::offline_at(const std::string& name, double t) const {
  const DeviceProfile p = profile(name);
  if (p.online_s <= 0) return kInf;
  if (!online(name, t)) return t;
  std::lock_guard<std::mutex> lock(mu_);
  const Timeline& tl = timeline(name, p, t);
  for (double x : tl.toggles) {
    if (x > t) return x;  // online at t, so the next flip takes it offline
  }
  return kInf;  // unreachable: the timeline extends past t
}

double Fleet::online_at(const std::string& name, double t) const {
  const DeviceProfile p = profile(name);
  if (p.online_s <= 0 || online(name, t)) return t;
  std::lock_guard<std::mutex> lock(mu_);
  const Timeline& tl = timeline(name, p, t);
  for (double x : tl.toggles) {
    if (x > t) return x;
  }
  return t;  // unreachable
}

}  // namespace fedra
