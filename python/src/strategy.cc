#include "python/src/strategy.h"

#include "apps/fedra/cli.h"
#include "core/data/tensor_checks.h"
#include "core/system/stop.h"
#include "python/src/names.h"
#include "python/src/session.h"
#include "strategies/builtin.h"
#include "strategies/fedavg/fedavg.h"

namespace py = pybind11;

namespace fedra::python {

namespace {

// Calls a hook with the interpreter lock taken by the caller; a Python exception becomes an Error
// with its words ("the Python aggregate raised: ...").
template <class... Args>
py::object call_hook(const py::object& fn, const std::string& what, Args&&... args) {
  try {
    return fn(std::forward<Args>(args)...);
  } catch (const py::error_already_set& e) {
    FEDRA_FAIL("the Python {} raised: {}", what, e.what());
  }
}

// A hook's dict of tensors as the model's tensors, in its order, its layout and finiteness checked.
NamedTensors model_tensors(const py::object& out, const NamedTensors& global, const Job& job,
                           const std::string& prefix, const std::string& what) {
  FEDRA_REQUIRE(py::isinstance<py::dict>(out), "the Python {} returned {}, not a dict of tensors", what,
                py::str(py::type::of(out)).cast<std::string>());
  const NamedTensors given = tensors_of(out, "the Python " + what + "'s");
  NamedTensors ordered = in_model_order(global, given, job.model, prefix, "the Python " + what);
  check_layout(global, ordered);
  check_finite(ordered);
  return ordered;
}

// The round's rule is the Python function: it holds every accepted update and calls the function once.
class PythonRule : public fedavg::Rule {
 public:
  PythonRule(std::shared_ptr<py::object> fn, Job job) : fn_(std::move(fn)), job_(std::move(job)) {}

  std::string name() const override { return "the Python aggregate"; }
  void add(const fedavg::Round&, const WorkerInfo& worker, fedavg::FitRes& update) override {
    std::map<std::string, double> metrics;  // the loop's own figures, without their "fit." prefix
    const std::string prefix = fedavg::kFitMetric;
    for (const auto& [name, value] : update.extra) {
      if (name.rfind(prefix, 0) == 0) metrics[name.substr(prefix.size())] = value;
    }
    held_.push_back({worker.name, std::move(update.weights), update.num_examples, update.steps, update.train_loss,
                     std::move(metrics)});
  }
  NamedTensors aggregate(const fedavg::Round& round) override {
    std::vector<Held> held = std::move(held_);
    held_.clear();
    const std::string prefix = prefix_of(job_.model, *round.global);
    py::gil_scoped_acquire gil;
    py::list updates;
    for (const Held& h : held) {
      py::dict u;
      u["worker"] = h.worker;
      u["weights"] = ordered_dict(h.weights, prefix);
      u["num_examples"] = h.num_examples;
      u["steps"] = h.steps;
      u["train_loss"] = h.train_loss;
      u["metrics"] = h.metrics;
      updates.append(u);
    }
    const py::object out = call_hook(*fn_, "aggregate", ordered_dict(*round.global, prefix), updates, round.number);
    return model_tensors(out, *round.global, job_, prefix, "aggregate");
  }
  void discard() override { held_.clear(); }

 private:
  struct Held {
    std::string worker;
    NamedTensors weights;
    int64_t num_examples;
    int64_t steps;
    double train_loss;
    std::map<std::string, double> metrics;
  };
  std::shared_ptr<py::object> fn_;
  Job job_;
  std::vector<Held> held_;
};

// The server's step is the Python function. It keeps its own state in Python: checkpoints hold the
// model, not that state.
class PythonServerStep : public fedavg::ServerStep {
 public:
  PythonServerStep(std::shared_ptr<py::object> fn, Job job, const uint32_t* round)
      : fn_(std::move(fn)), job_(std::move(job)), round_(round) {}

  std::string name() const override { return "the Python server_update"; }
  void step(const NamedTensors& global, NamedTensors& aggregate) override {
    const std::string prefix = prefix_of(job_.model, global);
    py::gil_scoped_acquire gil;
    const py::object out = call_hook(*fn_, "server_update", ordered_dict(global, prefix),
                                     ordered_dict(aggregate, prefix), *round_);
    aggregate = model_tensors(out, global, job_, prefix, "server_update");
  }

 private:
  std::shared_ptr<py::object> fn_;
  Job job_;
  const uint32_t* round_;
};

class PythonFedAvg : public fedavg::FedAvgCoordinator {
 public:
  PythonFedAvg(const Job& job, fedavg::FedAvgOptions options, PythonHooks hooks)
      : FedAvgCoordinator(job, std::move(options)), hooks_(std::move(hooks)) {
    if (hooks_.aggregate) set_rule(std::make_unique<PythonRule>(hooks_.aggregate, job));
    if (hooks_.server_update) set_server_step(std::make_unique<PythonServerStep>(hooks_.server_update, job, &round_));
  }

 protected:
  // The job's local training options, with what the Python configure returns for this worker
  // laid over them and checked as the command line's are.
  fedavg::FitIns configure(uint32_t round, const WorkerInfo& worker) override {
    fedavg::FitIns ins = FedAvgCoordinator::configure(round, worker);
    if (!hooks_.configure) return ins;
    std::map<std::string, std::string> values = options_to_map(ins.train);
    {
      py::gil_scoped_acquire gil;
      py::dict who;
      who["name"] = worker.name;
      who["num_examples"] = worker.num_examples;
      const py::object out = call_hook(*hooks_.configure, "configure", round, who);
      if (out.is_none()) return ins;
      FEDRA_REQUIRE(py::isinstance<py::dict>(out), "the Python configure returned {}, not a dict of options (or None)",
                    py::str(py::type::of(out)).cast<std::string>());
      for (const auto& item : py::reinterpret_borrow<py::dict>(out)) {
        const std::string key = py::str(item.first).cast<std::string>();
        FEDRA_REQUIRE(values.count(key), "the Python configure returned '{}', which is not a local training option; "
                      "it may set: {}", key, fmt::join(option_names(values), ", "));
        // str(): a float's shortest exact text; True/False as the command line writes them
        values[key] = py::isinstance<py::bool_>(item.second) ? (item.second.cast<bool>() ? "true" : "false")
                                                             : py::str(item.second).cast<std::string>();
      }
    }
    try {
      ins.train = parse_options<LocalTrainingOptions>(OptionMap("configure", values));
    } catch (const Error& e) {
      FEDRA_FAIL("the Python configure asked for round {} on worker {}: {}", round, worker.name, e.what());
    }
    return ins;
  }
  Metrics aggregate_fit(uint32_t round, const std::vector<Failure>& failures) override {
    round_ = round;  // the round PythonServerStep passes to server_update
    return FedAvgCoordinator::aggregate_fit(round, failures);
  }

 private:
  static std::vector<std::string> option_names(const std::map<std::string, std::string>& values) {
    std::vector<std::string> names;
    for (const auto& [k, v] : values) names.push_back(k);
    return names;
  }

  PythonHooks hooks_;
  uint32_t round_ = 0;
};

// The built-in strategies, with fedavg's coordinator taking its hooks from Python. Workers see the
// job as plain fedavg: their half is FedAvg's.
void register_strategies(StrategyRegistry& registry, const PythonHooks& hooks) {
  StrategyRegistry builtin;
  register_builtin_strategies(builtin);
  for (StrategyInfo info : builtin.list()) {
    if (info.name == "fedavg" && hooks.any()) {
      info.make_coordinator = [hooks](const Job& job) -> std::unique_ptr<CoordinatorStrategy> {
        auto c = std::make_unique<PythonFedAvg>(job, parse_options<fedavg::FedAvgOptions>(job.options), hooks);
        c->assemble();
        return c;
      };
    }
    registry.add(std::move(info));
  }
}

// A Python callable kept beyond the call that gave it; released with the interpreter lock held,
// whichever thread drops the last reference.
std::shared_ptr<py::object> keep(py::object fn, const char* what) {
  if (fn.is_none()) return nullptr;
  FEDRA_REQUIRE(PyCallable_Check(fn.ptr()), "{} must be a function, not {}", what,
                py::str(py::type::of(fn)).cast<std::string>());
  return std::shared_ptr<py::object>(new py::object(std::move(fn)), [](py::object* o) {
    py::gil_scoped_acquire gil;
    delete o;
  });
}

}  // namespace

py::object ordered_dict(const NamedTensors& tensors, const std::string& prefix) {
  py::object d = py::module_::import("collections").attr("OrderedDict")();
  for (const auto& [name, t] : tensors) d[py::str(name.substr(prefix.size()))] = t;
  return d;
}

NamedTensors tensors_of(const py::handle& dict, const std::string& what) {
  NamedTensors out;
  for (const auto& item : py::reinterpret_borrow<py::dict>(dict)) {
    const std::string name = py::str(item.first).cast<std::string>();
    try {
      out.emplace_back(name, py::cast<at::Tensor>(item.second));
    } catch (const py::cast_error&) {
      FEDRA_FAIL("{} '{}' is {}, not a torch.Tensor", what, name, py::str(py::type::of(item.second)).cast<std::string>());
    }
  }
  return out;
}

PythonCoordinator::PythonCoordinator(const std::vector<std::string>& args, py::object configure, py::object aggregate,
                                     py::object server_update) {
  hooks_.configure = keep(std::move(configure), "configure");
  hooks_.aggregate = keep(std::move(aggregate), "aggregate");
  hooks_.server_update = keep(std::move(server_update), "server_update");
  register_strategies(registry_, hooks_);
  std::vector<const char*> argv{"coordinator"};
  for (const auto& a : args) argv.push_back(a.c_str());
  const auto parsed = cli::parse(cli::Command::kCoordinator, static_cast<int>(argv.size()), argv.data(), registry_);
  config_ = cli::coordinator_config(parsed.vm, registry_);
  use_logging(parsed.vm["log-level"].as<std::string>());
  FEDRA_REQUIRE(!hooks_.any() || config_.cohort.job.strategy == "fedavg",
                "a Python strategy's hooks (configure, aggregate, server_update) are FedAvg's override points: "
                "they need --strategy fedavg, not '{}'", config_.cohort.job.strategy);
  config_.cohort.stop = std::make_shared<StopSignal>();
  // The parts must compose with the Python ones (no secure aggregation or DP's own rule beside a
  // Python aggregate, no server optimiser beside a Python server_update): refused here, naming
  // both, rather than when the job starts.
  if (hooks_.any()) registry_.get(config_.cohort.job.strategy).make_coordinator(config_.cohort.job);
}

PythonCoordinator::~PythonCoordinator() = default;

int PythonCoordinator::run() {
  py::gil_scoped_release unlocked;
  Coordinator coordinator(config_, registry_);
  return coordinator.run();
}

void PythonCoordinator::stop() { config_.cohort.stop->request(); }

}  // namespace fedra::python
