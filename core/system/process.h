// Process-wide settings every Fedra process applies once at start-up.
#pragma once

#include <cstdint>

namespace fedra {

// Sets LibTorch's intra-op threads (0: all cores) and one inter-op thread; returns the count.
int configure_threads(int threads);

// Keeps model-sized allocations (received frames, running sums, gradients) in the malloc heap
// instead of fresh mmap()s. glibc serves blocks over 32 MiB with mmap and unmaps them on free,
// so every round of a 40 MB model paid ~10,000 page faults per buffer: measured on the FedAvg
// round benchmark, 150 ms per round before, 85-90 ms after (docs/benchmarks.md). The price is
// that a process keeps its peak heap rather than returning it to the OS; blocks above
// `keep_below_bytes` still use mmap.
void tune_allocator(uint64_t keep_below_bytes = uint64_t{1} << 30);

// Debian 12's OpenBLAS (0.3.21) does not know CPUs newer than its release (e.g. Intel's
// Sapphire and Emerald Rapids, CPU model 143 and 207) and falls back to its generic "Prescott"
// kernels: a 64x784x256 matmul runs at 28 GFLOP/s instead of 119 on such a core. OpenBLAS reads
// OPENBLAS_CORETYPE only when it loads, so when it reports Prescott on a CPU with AVX-512 (or
// AVX2) this sets OPENBLAS_CORETYPE=SkylakeX (Haswell) and re-executes the program once with
// the same arguments. Nothing happens when OPENBLAS_CORETYPE is set already (the user's choice),
// when FEDRA_KEEP_BLAS is set, with another BLAS, or when OpenBLAS recognised the CPU. Call first
// thing in main(). Child processes (simulate's workers) inherit the variable.
void use_fast_blas_kernels(char** argv);

// Raises the soft limit on open files to the hard limit: a coordinator of 1,000 clients holds
// 1,000 sockets, and Debian's default soft limit is 1,024.
void raise_open_file_limit();

// This process's peak resident set size so far, in bytes (getrusage's ru_maxrss): what
// summary.json and every metrics line report as the coordinator's peak memory.
uint64_t peak_rss_bytes();

// CPU time the calling thread has used, in seconds (CLOCK_THREAD_CPUTIME_ID): what one side
// spends on a step, without the other threads of its process.
double thread_cpu_seconds();

}  // namespace fedra
