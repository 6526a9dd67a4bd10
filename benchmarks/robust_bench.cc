// Times Fedra's robust aggregators (core/federated/robust_aggregation.h) over K updates of N float32 and
// prints one JSON line; benchmarks/robust_speed.py runs numpy on the same shapes beside it.
//   robust_bench N K REPEATS THREADS   (THREADS: LibTorch's intra-op threads, 0 = all cores, as a
//                                      coordinator gets by default)
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include <torch/torch.h>

#include "core/federated/robust_aggregation.h"

namespace {

template <class F>
double best_ms(int repeats, F&& f) {
  double best = 1e300;
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: robust_bench N K REPEATS THREADS\n");
    return 2;
  }
  const int threads = std::atoi(argv[4]);
  at::set_num_threads(threads > 0 ? threads : static_cast<int>(std::thread::hardware_concurrency()));
  const int64_t n = std::atoll(argv[1]);
  const int k = std::atoi(argv[2]);
  const int repeats = std::atoi(argv[3]);
  torch::manual_seed(1);
  std::vector<fedra::NamedTensors> updates;
  for (int i = 0; i < k; ++i) updates.push_back({{"w", torch::rand({n})}});
  const double median = best_ms(repeats, [&] { fedra::coordinate_median(updates); });
  const double trimmed = best_ms(repeats, [&] { fedra::trimmed_mean(updates, 0.1); });
  std::printf("{\"n\": %lld, \"k\": %d, \"threads\": %d, \"median_ms\": %.3f, \"trimmed_mean_ms\": %.3f}\n",
              static_cast<long long>(n), k, at::get_num_threads(), median, trimmed);
  return 0;
}
