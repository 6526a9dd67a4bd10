#include "core/data/batching.h"

#include <algorithm>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/ATen.h>


namespace fedra {

void check_batches_mode(const std::string& mode, const std::string& option_name) {
  FEDRA_REQUIRE(mode == "shuffle" || mode == "sequential" || mode == "notebook" || mode == "notebook-pipeline",
                "{} must be shuffle, sequential, notebook or notebook-pipeline, got '{}'", option_name, mode);
}

std::pair<int64_t, int64_t> batch_rows(const std::string& mode, int64_t step, int64_t rank,
                                       int64_t batch_size, int64_t n) {
  if (mode == "notebook") {
    // Python's x[start:end] with start = (i+r)*B % n and end = (i+r+1)*B % n: when end wraps
    // to a smaller value the slice is empty (the notebook steps on an empty batch then).
    const int64_t start = ((step + rank) * batch_size) % n;
    const int64_t end = ((step + rank + 1) * batch_size) % n;
    return {start, std::max(start, end)};
  }
  if (mode == "notebook-pipeline") {
    // The pipeline cell's variant: when the end wraps to 0 it sets end = -1, so the slice runs
    // to the last row but one.
    const int64_t start = (step * batch_size) % n;
    int64_t end = ((step + 1) * batch_size) % n;
    if (end == 0) end = n - 1;
    return {start, std::max(start, end)};
  }
  FEDRA_REQUIRE(mode == "sequential", "batch_rows: unknown batches mode '{}'", mode);
  const int64_t per_epoch = steps_per_epoch(n, batch_size);
  const int64_t begin = (step % per_epoch) * batch_size;
  return {begin, std::min(n, begin + batch_size)};
}

BatchOrder::BatchOrder(std::string mode, int64_t batch_size, uint64_t job_seed, std::string worker_name,
                       int64_t rank)
    : mode_(std::move(mode)), batch_size_(batch_size), seed_(job_seed), name_(std::move(worker_name)), rank_(rank) {
  check_batches_mode(mode_, "batches");
  FEDRA_REQUIRE(batch_size_ >= 1, "batch size must be >= 1, got {}", batch_size_);
}

std::pair<at::Tensor, at::Tensor> BatchOrder::batch(const Dataset& data, int64_t step) {
  const int64_t n = data.size();
  FEDRA_REQUIRE(n > 0, "no training data to draw a batch from");
  if (mode_ != "shuffle") {
    const auto [begin, end] = batch_rows(mode_, step, rank_, batch_size_, n);
    return {data.inputs.narrow(0, begin, end - begin), data.targets.narrow(0, begin, end - begin)};
  }
  const int64_t per_epoch = steps_per_epoch(n, batch_size_);
  const int64_t epoch = step / per_epoch;
  if (epoch != perm_epoch_ || !perm_.defined()) {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(worker_seed(seed_, static_cast<uint32_t>(epoch), name_));
    perm_ = at::randperm(n, gen, at::kLong);
    perm_epoch_ = epoch;
  }
  const int64_t begin = (step % per_epoch) * batch_size_;
  const at::Tensor idx = perm_.narrow(0, begin, std::min(batch_size_, n - begin));
  return {data.inputs.index_select(0, idx), data.targets.index_select(0, idx)};
}

uint64_t worker_seed(uint64_t job_seed, uint32_t round, const std::string& worker_name) {
  uint64_t h = 1469598103934665603ULL;  // FNV-1a, stable across platforms unlike std::hash
  for (unsigned char c : worker_name) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  uint64_t x = h ^ (job_seed * 0x9E3779B97F4A7C15ULL) ^ (uint64_t{round} << 32);
  // splitmix64 finaliser: nearby inputs give unrelated seeds.
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ULL;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBULL;
  return (x ^ (x >> 31)) >> 1;  // 63 bits: seeds travel as options and parse as int64
}

}  // namespace fedra
