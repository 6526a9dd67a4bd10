// The `fedra._fedra` extension: Python's view of a Session (python/src/session.h). Tensors cross
// in both directions as the same storage (torch/extension.h's casters): the global model handed to
// Python is the worker's own tensors, and the state dict handed back is read where it lies.
#include <torch/extension.h>

#include <chrono>
#include <map>
#include <string>
#include <vector>

#include "apps/fedra/cli.h"
#include "core/kit/error.h"
#include "python/src/optim.h"
#include "python/src/session.h"
#include "python/src/strategy.h"
#include "strategies/builtin.h"

namespace py = pybind11;
using fedra::python::Session;
using fedra::python::Task;

namespace {

// `fedra worker ARGS...` read exactly as the command line reads them (every option, its checks and
// its words), with no dataset of Fedra's when `own_examples` > 0.
std::shared_ptr<Session> start_session(const std::vector<std::string>& args, int64_t own_examples) {
  fedra::StrategyRegistry registry;
  fedra::register_builtin_strategies(registry);
  std::vector<const char*> argv{"worker"};
  for (const auto& a : args) argv.push_back(a.c_str());
  fedra::WorkerConfig config;
  std::string level;
  try {
    const auto parsed =
        fedra::cli::parse(fedra::cli::Command::kWorker, static_cast<int>(argv.size()), argv.data(), registry);
    config = fedra::cli::worker_config(parsed.vm);
    level = parsed.vm["log-level"].as<std::string>();
  } catch (const fedra::Error& e) {
    throw py::value_error(e.what());
  }
  if (own_examples > 0) {
    config.dataset.clear();
    config.num_examples = own_examples;
  }
  try {
    return Session::start(std::move(config), level);
  } catch (const fedra::Error& e) {
    throw py::value_error(e.what());
  }
}

py::dict config_of(const Task& t) {
  const fedra::TrainOptions& o = t.options;
  py::dict c;
  c["strategy"] = t.job.strategy;
  c["model"] = t.job.model;
  c["round"] = t.round;
  c["optimizer"] = o.optim.name;
  c["lr"] = o.optim.lr;
  c["momentum"] = o.optim.momentum;
  c["weight_decay"] = o.optim.weight_decay;
  c["epochs"] = o.epochs;
  c["local_steps"] = o.max_steps;
  c["batch_size"] = o.batch_size;
  c["proximal_mu"] = o.proximal_mu;
  c["loss"] = o.loss;
  c["seed"] = o.seed;
  return c;
}

// A reply's state dict (strategy.h tensors_of), a wrong entry raising TypeError.
fedra::NamedTensors named_tensors(const py::handle& state) {
  try {
    return fedra::python::tensors_of(state, "the reply's");
  } catch (const fedra::Error& e) {
    throw py::type_error(e.what());
  }
}

// fedra.loops' optimiser (optim.h): the C++ worker's own step over a Python model's parameters.
void bind_optimizer(py::module_& m) {
  py::class_<fedra::python::LocalOptimizer>(m, "Optimizer")
      .def(py::init([](std::vector<at::Tensor> params, const std::string& name, double lr, double momentum,
                       double weight_decay, double proximal_mu) {
             fedra::OptimizerConfig c;
             c.name = name;
             c.lr = lr;
             c.momentum = momentum;
             c.weight_decay = weight_decay;
             try {
               c.validate();
               return std::make_unique<fedra::python::LocalOptimizer>(std::move(params), c, proximal_mu);
             } catch (const fedra::Error& e) {
               throw py::value_error(e.what());
             }
           }),
           py::arg("params"), py::arg("optimizer"), py::arg("lr"), py::arg("momentum") = 0.0,
           py::arg("weight_decay") = 0.0, py::arg("proximal_mu") = 0.0)
      .def("zero_grad", &fedra::python::LocalOptimizer::zero_grad)
      .def("step", &fedra::python::LocalOptimizer::step)
      .def("backward_step", &fedra::python::LocalOptimizer::backward_step, py::arg("loss"), py::arg("examples"),
           py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("loss_sum", &fedra::python::LocalOptimizer::loss_sum)
      .def_property_readonly("examples", &fedra::python::LocalOptimizer::examples)
      .def_property_readonly("steps", &fedra::python::LocalOptimizer::steps);
}

}  // namespace

PYBIND11_MODULE(_fedra, m) {
  m.doc() = "Fedra's C++ worker runtime, driven from Python (see the fedra package)";

  py::class_<Task, std::shared_ptr<Task>>(m, "Task")
      .def_property_readonly("kind", [](const Task& t) { return t.kind; })
      .def_property_readonly("round", [](const Task& t) { return t.round; })
      .def_property_readonly("model", [](const Task& t) { return fedra::python::ordered_dict(t.model, t.prefix); })
      .def_property_readonly("config", &config_of)
      .def_property_readonly("data", [](const Task& t) -> py::object {
        if (!t.inputs.defined()) return py::none();
        return py::make_tuple(t.inputs, t.targets);
      });

  bind_optimizer(m);

  py::class_<fedra::python::PythonCoordinator>(m, "Coordinator")
      .def(py::init([](const std::vector<std::string>& args, py::object configure, py::object aggregate,
                       py::object server_update) {
             try {
               return std::make_unique<fedra::python::PythonCoordinator>(args, std::move(configure),
                                                                         std::move(aggregate), std::move(server_update));
             } catch (const fedra::Error& e) {
               throw py::value_error(e.what());
             }
           }),
           py::arg("args"), py::arg("configure") = py::none(), py::arg("aggregate") = py::none(),
           py::arg("server_update") = py::none())
      .def("run", &fedra::python::PythonCoordinator::run)
      .def("stop", &fedra::python::PythonCoordinator::stop);

  py::class_<Session, std::shared_ptr<Session>>(m, "Session")
      .def(py::init(&start_session), py::arg("args"), py::arg("own_examples") = 0)
      .def(
          "next",
          [](Session& s, double timeout_s) {
            py::gil_scoped_release unlocked;
            return s.next(std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000)));
          },
          py::arg("timeout_s"))
      .def(
          "reply",
          [](Session& s, Task& t, const py::dict& state, int64_t num_examples, double train_loss, int64_t steps,
             std::map<std::string, double> metrics) {
            fedra::NamedTensors weights = named_tensors(state);
            fedra::LocalOutcome outcome;
            outcome.num_examples = num_examples;
            outcome.stats.mean_loss = train_loss;
            outcome.stats.steps = steps;
            outcome.metrics = std::move(metrics);
            try {
              py::gil_scoped_release unlocked;
              s.reply(t, weights, outcome);
            } catch (const fedra::Error& e) {
              throw py::value_error(e.what());
            }
          },
          py::arg("task"), py::arg("state"), py::arg("num_examples"), py::arg("train_loss"), py::arg("steps"),
          py::arg("metrics"))
      .def(
          "reply_evaluation",
          [](Session& s, Task& t, int64_t num_examples, double loss, int64_t correct) {
            fedra::EvalStats figures;
            figures.examples = num_examples;
            figures.loss = loss;
            figures.correct = correct;
            figures.accuracy = num_examples > 0 ? static_cast<double>(correct) / static_cast<double>(num_examples) : 0;
            try {
              py::gil_scoped_release unlocked;
              s.reply_evaluation(t, figures);
            } catch (const fedra::Error& e) {
              throw py::value_error(e.what());
            }
          },
          py::arg("task"), py::arg("num_examples"), py::arg("loss"), py::arg("correct"))
      .def("fail", &Session::fail, py::arg("task"), py::arg("why"))
      .def("close", &Session::close)
      .def_property_readonly("ended", &Session::ended)
      .def_property_readonly("exit_code", &Session::exit_code)
      .def_property_readonly("last_error", &Session::last_error);
}
