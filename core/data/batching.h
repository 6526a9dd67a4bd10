// Which rows of a worker's data a training step uses, shared by the step-driven strategies
// (gradsum, split) so that their runs and the one-process references they are tested against
// draw the same batches.
//
//   shuffle     a fresh permutation per epoch of the worker's data, seeded by the job seed, the
//               epoch and the worker's name (reproducible, independent of connection order)
//   sequential  rows [s*B, s*B + B) of the data in order, modulo the epoch; the last batch of
//               an epoch is short
//   notebook    the seed notebook's slicing: worker r at step s takes rows [(s+r)B mod n,
//               (s+r+1)B mod n), empty when the end wraps
//   notebook-pipeline  the notebook's pipeline cell: rows [sB mod n, (s+1)B mod n), the end
//               taken as n - 1 when it wraps to 0 (its `end = -1`)
#pragma once

#include <cstdint>
#include <string>
#include <utility>

#include <ATen/core/Tensor.h>

#include "core/data/dataset.h"

namespace fedra {

void check_batches_mode(const std::string& mode, const std::string& option_name);

// Rows [begin, end) of a worker's data used at `step` for batches=sequential and notebook.
std::pair<int64_t, int64_t> batch_rows(const std::string& mode, int64_t step, int64_t rank,
                                       int64_t batch_size, int64_t n);

// Steps in one pass over n rows with batch size b.
inline int64_t steps_per_epoch(int64_t n, int64_t b) { return n <= 0 ? 0 : (n + b - 1) / b; }

class BatchOrder {
 public:
  BatchOrder(std::string mode, int64_t batch_size, uint64_t job_seed, std::string worker_name,
             int64_t rank = 0);
  // Inputs and targets of `step` (views for sequential/notebook, gathered rows for shuffle).
  std::pair<at::Tensor, at::Tensor> batch(const Dataset& data, int64_t step);

 private:
  std::string mode_;
  int64_t batch_size_;
  uint64_t seed_;
  std::string name_;
  int64_t rank_;
  at::Tensor perm_;
  int64_t perm_epoch_ = -1;
};

// A seed for one worker in one round that does not depend on connection order: FNV-1a of the
// worker's name mixed with the job seed and the round; below 2^63.
uint64_t worker_seed(uint64_t job_seed, uint32_t round, const std::string& worker_name);

}  // namespace fedra
