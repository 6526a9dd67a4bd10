// Partitioners: which training examples each simulated client holds.
//
// Specs (all seeded; the same labels, spec, client count and seed give the same partition in
// every process, so each worker computes the partition and keeps only its own part):
//   iid                         a random permutation cut into equal parts (sizes differ by <= 1)
//   dirichlet:alpha=A[,min_size=M]
//                               label skew: for each class, the share of each client is drawn
//                               from Dirichlet(A); small A is more skewed. Redrawn (up to 100
//                               times) until every client has at least M examples (default 10).
//   shards:k=K                  McMahan et al.'s pathological split: sort by label, cut into
//                               K x clients shards of equal size, deal K random shards to each
//                               client, so each holds at most K classes.
//   full                        every client holds the whole dataset (replicated data, as in
//                               the gradient-summing notebook; not a federated split)
// Except with full, every example is assigned to exactly one client; examples left over by
// shards (fewer than K x clients) are dropped and their number is part of the result.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "core/kit/error.h"

namespace fedra {

struct Partition {
  std::vector<std::vector<int64_t>> clients;  // example indices per client, ascending
  int64_t dropped = 0;
};

// Checks a partition spec's name and arguments (alpha > 0, k >= 1, no unknown argument) without
// data: what partition_dataset would refuse of the spec itself, refused before a worker starts.
void check_partition_spec(const std::string& spec_text);

Partition partition_dataset(const at::Tensor& targets, int64_t num_classes,
                            const std::string& spec, int64_t num_clients, uint64_t seed);

}  // namespace fedra
