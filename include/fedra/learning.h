// What strategies compute with: datasets, partitions and batches; models from specs and
// TorchScript, their state and files; local training, losses, optimisers; tensor checks.
#pragma once

#include "core/data/batching.h"
#include "core/data/dataset.h"
#include "core/data/partition.h"
#include "core/data/tensor_checks.h"
#include "core/model/export.h"
#include "core/model/model.h"
#include "core/model/script_model.h"
#include "core/model/state.h"
#include "core/training/optimizer.h"
#include "core/training/training.h"
