// A coordinator in the Python process whose FedAvg rule is a Python function: fedra.Coordinator
// (aggregate=...). The C++ coordinator keeps everything else (networking, the checks on each
// update, the server optimiser, evaluation, metrics, checkpoints of the model); the function gets
// the round's accepted updates and returns the aggregate, as a Rule (strategies/fedavg/part.h)
// that holds every update: O(workers x model) memory, like the built-in median.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <torch/extension.h>

#include "core/kit/registry.h"
#include "core/runtime/coordinator.h"

namespace fedra::python {

// `tensors` as an OrderedDict for Python, each name without `prefix` (names.h prefix_of).
pybind11::object ordered_dict(const NamedTensors& tensors, const std::string& prefix);

class PythonCoordinator {
 public:
  // `args`: `fedra coordinator` options. `aggregate`: called as aggregate(global, updates, round),
  // global an OrderedDict of the model's tensors, updates a list of dicts (worker, weights,
  // num_examples, steps, train_loss); returns the aggregate as a dict of tensors. None: FedAvg's
  // own rule.
  PythonCoordinator(const std::vector<std::string>& args, pybind11::object aggregate);
  ~PythonCoordinator();
  // Runs the job on this thread (the interpreter lock released, taken again to call aggregate);
  // returns 0 if it completed, 1 if it failed, 130 if stopped.
  int run();
  // Ends the job from another thread: summary.json says interrupted.
  void stop();

 private:
  StrategyRegistry registry_;
  CoordinatorConfig config_;
  std::shared_ptr<pybind11::object> aggregate_;
};

}  // namespace fedra::python
