// A coordinator in the Python process whose FedAvg override points are Python functions:
// fedra.Coordinator(strategy=a fedra.FedAvg subclass, or aggregate=...). The C++ coordinator keeps
// everything else (networking, the checks on each update and on what the functions return,
// evaluation, metrics, checkpoints of the model). Each function is one of FedAvg's parts
// (strategies/fedavg/part.h), so the pipeline's refusals apply to it by name:
//   configure      the local training options of one worker's fedavg.fit (over the job's)
//   aggregate      the round's Rule: holds every accepted update (O(workers x model) memory, like
//                  the built-in median) and calls the function once
//   server_update  the ServerStep: the next global model from the aggregate
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
// The reverse: a dict of name -> torch.Tensor as NamedTensors (no copies), in the dict's order.
// Throws Error naming `what` ("the reply's", "the Python aggregate's") and an entry that is no tensor.
NamedTensors tensors_of(const pybind11::handle& dict, const std::string& what);

// The Python functions (each may be None: FedAvg's own part runs).
struct PythonHooks {
  // configure(round, worker) -> dict of local training options (lr, local_epochs, ...) or None;
  // worker: a dict with name and num_examples.
  std::shared_ptr<pybind11::object> configure;
  // aggregate(global, updates, round) -> dict of tensors; global an OrderedDict of the model's
  // tensors, updates a list of dicts (worker, weights, num_examples, steps, train_loss).
  std::shared_ptr<pybind11::object> aggregate;
  // server_update(global, aggregate, round) -> dict of tensors: the next global model.
  std::shared_ptr<pybind11::object> server_update;
  bool any() const { return configure || aggregate || server_update; }
};

class PythonCoordinator {
 public:
  // `args`: `fedra coordinator` options; the hooks as PythonHooks says (None: FedAvg's own).
  PythonCoordinator(const std::vector<std::string>& args, pybind11::object configure, pybind11::object aggregate,
                    pybind11::object server_update);
  ~PythonCoordinator();
  // Runs the job on this thread (the interpreter lock released, taken again to call aggregate);
  // returns 0 if it completed, 1 if it failed, 130 if stopped.
  int run();
  // Ends the job from another thread: summary.json says interrupted.
  void stop();

 private:
  StrategyRegistry registry_;
  CoordinatorConfig config_;
  PythonHooks hooks_;
};

}  // namespace fedra::python
