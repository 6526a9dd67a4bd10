// Datasets: examples as tensors, loaded from a spec string.
//
// A Dataset is inputs (float32, [N, ...]) and targets: int64 class indices [N], or float32 [N] or
// [N, K] for regression (losses mse, l1) and multi-label (bce) tasks, with num_classes 0. Specs:
//   fmnist[:dir=D,limit=N,test_limit=N]   Fashion-MNIST from the gzip IDX files of Debian's
//                                        dataset-fashion-mnist (default dir
//                                        /usr/share/datasets/fashion-mnist), [N,1,28,28],
//                                        standardised with the training set's mean and std
//   idx:train_images=P,train_labels=P[,test_images=P,test_labels=P,limit=N,test_limit=N]
//                                        any IDX files (gzip or raw); uint8 images scaled to [0,1]
//   csv:train=P[,test=P,label=0,target=class|float,header=auto,sep=comma|semicolon|tab,limit=N,test_limit=N]
//                                        one example per row, the label column an integer class
//                                        (target=float: a real number, for regression)
//   tensors:PATH[,test=P,x=x,y=y,limit=N,test_limit=N]
//                                        a torch.save({'x': X, 'y': Y}) file: integer Y class
//                                        labels, float Y [N] or [N, K] regression/multi-label
//   synthetic[:n=320,features=16,classes=2,seed=40,test_n=0]
//                                        the notebook's task: x = rand([n, features]),
//                                        y = randint(0, classes) from one generator seeded with
//                                        `seed`, exactly as torch.manual_seed(seed) then rand,
//                                        randint in Python; without test_n the test split is the
//                                        training set
// A worker loads the training split and keeps the rows of its partition (core/data/partition.h);
// the coordinator loads the test split to evaluate. Loading is deterministic.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "core/kit/error.h"

namespace fedra {

struct Dataset {
  std::string name;
  at::Tensor inputs;   // float32 [N, ...]
  at::Tensor targets;  // int64 [N] class indices, or float32 [N] / [N, K]
  int64_t num_classes = 0;

  int64_t size() const { return targets.defined() ? targets.size(0) : 0; }
  // Regression or multi-label targets (float), not class labels: no classes, no label histogram.
  bool real_targets() const { return targets.defined() && at::isFloatingType(targets.scalar_type()); }
};

struct DatasetSplits {
  Dataset train;
  Dataset test;
};

// Which splits to read: a worker needs only the training split, a coordinator only the test
// split (Fashion-MNIST's training images are ~6/7 of the loading time). The split not asked for
// is left empty, except that `synthetic` without test_n uses its training set as the test set.
enum class Splits { kBoth, kTrain, kTest };

DatasetSplits load_dataset(const std::string& spec, Splits which = Splits::kBoth);
// What load_dataset would refuse of the spec's own numbers (limit, test_limit >= 0), without
// reading anything: checked when the command line is read.
void check_dataset_spec(const std::string& spec);

// Seeds torch's global generator with a synthetic spec's seed and makes the draws that generating
// its training split makes, leaving the generator where a script that seeds once, draws x and y,
// then builds its model would have it (the notebook does). Throws for other datasets.
void seed_like_synthetic(const std::string& spec);

Dataset subset(const Dataset& data, const std::vector<int64_t>& indices);
// Splits `data` into (train, held out): a seeded random round(fraction * size) examples are held
// out (for federated evaluation, --holdout), the rest kept in their order. fraction in [0, 1).
std::pair<Dataset, Dataset> holdout_split(const Dataset& data, double fraction, uint64_t seed);
std::vector<int64_t> label_histogram(const Dataset& data);

}  // namespace fedra
