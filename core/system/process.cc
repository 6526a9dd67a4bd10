#include "core/system/process.h"

#include <dlfcn.h>
#include <malloc.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/resource.h>
#include <time.h>

#include <algorithm>
#include <cctype>
#include <string>
#include <thread>

#include <ATen/Parallel.h>

namespace fedra {

void use_fast_blas_kernels(char** argv) {
  if (::getenv("OPENBLAS_CORETYPE") != nullptr || ::getenv("FEDRA_KEEP_BLAS") != nullptr) return;
  using CoreName = char* (*)();
  const auto corename = reinterpret_cast<CoreName>(::dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  if (corename == nullptr) return;  // not OpenBLAS
  std::string core = corename();
  for (auto& c : core) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (core != "prescott") return;
  const char* fix = __builtin_cpu_supports("avx512f") ? "SkylakeX" : __builtin_cpu_supports("avx2") ? "Haswell" : nullptr;
  if (fix == nullptr) return;
  ::setenv("OPENBLAS_CORETYPE", fix, 1);
  ::execv("/proc/self/exe", argv);  // returns only on failure: then go on with the slow kernels
}

int configure_threads(int threads) {
  const int n = threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  at::set_num_threads(n);
  static bool interop_set = false;  // LibTorch allows setting it once per process
  if (!interop_set) {
    at::set_num_interop_threads(1);
    interop_set = true;
  }
  return n;
}

void tune_allocator(uint64_t keep_below_bytes) {
  const auto bytes = static_cast<int>(std::min<uint64_t>(keep_below_bytes, uint64_t{1} << 30));
  mallopt(M_MMAP_THRESHOLD, bytes);
  mallopt(M_TRIM_THRESHOLD, bytes);
}

void raise_open_file_limit() {
  struct rlimit limit {};
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    setrlimit(RLIMIT_NOFILE, &limit);
  }
}

double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

uint64_t peak_rss_bytes() {
  struct rusage usage {};
  if (getrusage(RUSAGE_SELF, &usage) != 0) return 0;
  return static_cast<uint64_t>(usage.ru_maxrss) * 1024;  // Linux reports kilobytes
}

}  // namespace fedra
