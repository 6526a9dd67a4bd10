// Fleets (core/federated/fleet.h): the distributions draw what they say, the same seed and name give the
// same device, churn timelines are consistent, files are read with errors naming the line.
#include "tests/testing.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <vector>

#include "core/federated/fleet.h"
#include "tests/test_util.h"

using namespace fedra;

namespace {

std::vector<double> slowdowns(const Fleet& f, int n) {
  std::vector<double> out;
  for (int i = 0; i < n; ++i) out.push_back(f.profile(fmt::format("worker-{}", i)).slowdown);
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

TEST_CASE("fleet: none is the machine itself, always online") {
  const Fleet f("none", 1);
  CHECK_FALSE(f.active());
  CHECK(f.profile("worker-0").slowdown == 1);
  CHECK(f.online("worker-0", 1e9));
  CHECK(std::isinf(f.offline_at("worker-0", 0)));
  CHECK(f.network_s("worker-0", 1000000, 1000000) == 0);
}

TEST_CASE("fleet: lognormal:sigma=1.8 has its median at 1 and its slowest tenth 10x slower") {
  const Fleet f("lognormal:sigma=1.8", 7);
  const auto s = slowdowns(f, 4000);
  const double median = s[s.size() / 2], p90 = s[s.size() * 9 / 10];
  CHECK(median > 0.85);
  CHECK(median < 1.15);
  CHECK(p90 > 8);
  CHECK(p90 < 12.5);
  // The same seed and name give the same device; another seed another fleet.
  CHECK(Fleet("lognormal:sigma=1.8", 7).profile("worker-3").slowdown == f.profile("worker-3").slowdown);
  CHECK(Fleet("lognormal:sigma=1.8", 8).profile("worker-3").slowdown != f.profile("worker-3").slowdown);
  CHECK(f.compute_s("worker-3", 10) == doctest::Approx(10 * 0.05 * f.profile("worker-3").slowdown));
}

TEST_CASE("fleet: stragglers, bandwidth and latency") {
  const Fleet f("stragglers:fraction=0.2,slowdown=10,latency=0.1,mbps=8,step=0.5", 3);
  const auto s = slowdowns(f, 2000);
  const auto slow = std::count(s.begin(), s.end(), 10.0);
  CHECK(std::count(s.begin(), s.end(), 1.0) + slow == 2000);
  CHECK(slow > 330);
  CHECK(slow < 470);
  CHECK(f.step_s() == 0.5);
  // 2 x 0.1 s latency + 2 MB at 8 Mbit/s = 2.2 s.
  CHECK(f.network_s("worker-1", 1000000, 1000000) == doctest::Approx(2.2));
  const Fleet spread("lognormal:sigma=0,mbps=8,net_sigma=1", 3);
  CHECK(spread.profile("a").slowdown == 1);
  CHECK(spread.profile("a").mbps != spread.profile("b").mbps);
}

TEST_CASE("fleet: churn timelines alternate, are consistent and online two thirds of the time") {
  const Fleet f("lognormal:sigma=1,online=100,offline=50", 5);
  double on = 0;
  int samples = 0;
  for (int d = 0; d < 200; ++d) {
    const std::string name = fmt::format("worker-{}", d);
    for (double t = 0; t < 3000; t += 7.5, ++samples) on += f.online(name, t) ? 1 : 0;
    for (double t : {0.0, 13.0, 400.0, 2500.0}) {
      if (f.online(name, t)) {
        const double off = f.offline_at(name, t);
        CHECK(off > t);
        CHECK_FALSE(f.online(name, off));
        CHECK(f.online(name, (t + off) / 2));
        CHECK(f.online_at(name, t) == t);
      } else {
        const double back = f.online_at(name, t);
        CHECK(back > t);
        CHECK(f.online(name, back));
        CHECK(f.offline_at(name, t) == t);
      }
    }
  }
  CHECK(on / samples == doctest::Approx(2.0 / 3.0).epsilon(0.06));
  // A fleet without churn never goes offline.
  CHECK(std::isinf(Fleet("lognormal:sigma=1", 5).offline_at("worker-0", 10)));
}

TEST_CASE("fleet: a CSV file per device, with a default row; errors name the file and line") {
  test::TempDir dir;
  {
    std::ofstream out(dir / "fleet.csv");
    out << "name,slowdown,latency_s,mbps,online_s,offline_s\n"
        << "worker-0,4,0.2,10,,\n"
        << "# a comment\n"
        << "*,1.5\n";
  }
  const Fleet f(dir / "fleet.csv", 1);
  CHECK(f.active());
  CHECK(f.profile("worker-0").slowdown == 4);
  CHECK(f.profile("worker-0").latency_s == 0.2);
  CHECK(f.profile("worker-0").mbps == 10);
  CHECK(f.profile("worker-9").slowdown == 1.5);
  CHECK(Fleet("csv:path=" + (dir / "fleet.csv") + ",step=2", 1).step_s() == 2);
  {
    std::ofstream out(dir / "bad.csv");
    out << "worker-0,4\nworker-1,fast\n";
  }
  CHECK_THROWS_WITH_AS(Fleet(dir / "bad.csv", 1), doctest::Contains("line 2 slowdown: 'fast' is not a number"), Error);
  {
    std::ofstream out(dir / "nodefault.csv");
    out << "worker-0,4\n";
  }
  CHECK_THROWS_WITH_AS(Fleet(dir / "nodefault.csv", 1).profile("worker-1"),
                       doctest::Contains("lists no device worker-1 and no default row"), Error);
  CHECK_THROWS_WITH_AS(Fleet(dir / "missing.csv", 1), doctest::Contains("cannot be read"), Error);
}

TEST_CASE("fleet: bad specs are refused saying what is wrong") {
  CHECK_THROWS_WITH_AS(Fleet("gaussian:sigma=1", 1), doctest::Contains("unknown fleet 'gaussian'"), Error);
  CHECK_THROWS_WITH_AS(Fleet("lognormal:sigam=1", 1), doctest::Contains("sigam"), Error);
  CHECK_THROWS_WITH_AS(Fleet("lognormal:online=10", 1), doctest::Contains("needs both online and offline"), Error);
  CHECK_THROWS_WITH_AS(Fleet("stragglers:fraction=2", 1), doctest::Contains("fraction must be in [0, 1]"), Error);
  CHECK_THROWS_WITH_AS(Fleet("lognormal:step=0", 1), doctest::Contains("step"), Error);
  FleetOptions o;
  o.fleet("lognormal:sigma=x");
  CHECK_THROWS_WITH_AS(o.validate("fedbuff"), doctest::Contains("fedbuff.fleet"), Error);
}
