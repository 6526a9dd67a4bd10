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


// The round's rule is the Python function: it holds every accepted update and calls the function once.
class PythonRule : public fedavg::Rule {
 public:
  PythonRule(std::shared_ptr<py::object> fn, Job job) : fn_(std::move(fn)), job_(std::move(job)) {}

  std::string name() const override { return "the Python aggregate"; }
  void add(const fedavg::Round&, const WorkerInfo& worker, fedavg::FitRes& update) override {
    held_.push_back({worker.name, std::move(update.weights), update.num_examples, update.steps, update.train_loss});
  }
  NamedTensors aggregate(const fedavg::Round& round) override {
    const std::string prefix = prefix_of(job_.model, *round.global);
    NamedTensors given;
    {
      py::gil_scoped_acquire gil;
      try {
        py::list updates;
        for (const Held& h : held_) {
          py::dict u;
          u["worker"] = h.worker;
          u["weights"] = ordered_dict(h.weights, prefix);
          u["num_examples"] = h.num_examples;
          u["steps"] = h.steps;
          u["train_loss"] = h.train_loss;
          updates.append(u);
        }
        py::object out = (*fn_)(ordered_dict(*round.global, prefix), updates, round.number);
        FEDRA_REQUIRE(py::isinstance<py::dict>(out), "the Python aggregate returned {}, not a dict of tensors",
                      py::str(py::type::of(out)).cast<std::string>());
        for (const auto& item : py::reinterpret_borrow<py::dict>(out)) {
          given.emplace_back(py::cast<std::string>(item.first), py::cast<at::Tensor>(item.second));
        }
      } catch (const py::error_already_set& e) {
        held_.clear();
        FEDRA_FAIL("the Python aggregate raised: {}", e.what());
      } catch (const py::cast_error& e) {
        held_.clear();
        FEDRA_FAIL("the Python aggregate returned something that is not a tensor: {}", e.what());
      }
    }
    held_.clear();
    NamedTensors ordered = in_model_order(*round.global, given, job_.model, prefix, "the Python aggregate");
    check_layout(*round.global, ordered);
    check_finite(ordered);
    return ordered;
  }
  void discard() override { held_.clear(); }

 private:
  struct Held {
    std::string worker;
    NamedTensors weights;
    int64_t num_examples;
    int64_t steps;
    double train_loss;
  };
  std::shared_ptr<py::object> fn_;
  Job job_;
  std::vector<Held> held_;
};

class PythonFedAvg : public fedavg::FedAvgCoordinator {
 public:
  PythonFedAvg(const Job& job, fedavg::FedAvgOptions options, std::shared_ptr<py::object> fn)
      : FedAvgCoordinator(job, std::move(options)) {
    set_rule(std::make_unique<PythonRule>(std::move(fn), job));
  }
};

// The built-in strategies, with fedavg's coordinator taking its rule from Python. Workers see the
// job as plain fedavg: their half is FedAvg's.
void register_strategies(StrategyRegistry& registry, const std::shared_ptr<py::object>& fn) {
  StrategyRegistry builtin;
  register_builtin_strategies(builtin);
  for (StrategyInfo info : builtin.list()) {
    if (info.name == "fedavg" && fn) {
      info.make_coordinator = [fn](const Job& job) -> std::unique_ptr<CoordinatorStrategy> {
        auto c = std::make_unique<PythonFedAvg>(job, parse_options<fedavg::FedAvgOptions>(job.options), fn);
        c->assemble();
        return c;
      };
    }
    registry.add(std::move(info));
  }
}

}  // namespace

py::object ordered_dict(const NamedTensors& tensors, const std::string& prefix) {
  py::object d = py::module_::import("collections").attr("OrderedDict")();
  for (const auto& [name, t] : tensors) d[py::str(name.substr(prefix.size()))] = t;
  return d;
}

PythonCoordinator::PythonCoordinator(const std::vector<std::string>& args, py::object aggregate) {
  if (!aggregate.is_none()) {
    FEDRA_REQUIRE(PyCallable_Check(aggregate.ptr()), "aggregate must be a function aggregate(global, updates, round)");
    // Released with the interpreter lock held, whichever thread drops the last reference.
    aggregate_ = std::shared_ptr<py::object>(new py::object(std::move(aggregate)), [](py::object* o) {
      py::gil_scoped_acquire gil;
      delete o;
    });
  }
  register_strategies(registry_, aggregate_);
  std::vector<const char*> argv{"coordinator"};
  for (const auto& a : args) argv.push_back(a.c_str());
  const auto parsed = cli::parse(cli::Command::kCoordinator, static_cast<int>(argv.size()), argv.data(), registry_);
  config_ = cli::coordinator_config(parsed.vm, registry_);
  use_logging(parsed.vm["log-level"].as<std::string>());
  FEDRA_REQUIRE(!aggregate_ || config_.cohort.job.strategy == "fedavg",
                "aggregate= is FedAvg's rule: it needs --strategy fedavg, not '{}'", config_.cohort.job.strategy);
  config_.cohort.stop = std::make_shared<StopSignal>();
  // The parts must compose with the Python rule (no secure aggregation, no DP's own rule): refused
  // here, naming both, rather than when the job starts.
  if (aggregate_) registry_.get(config_.cohort.job.strategy).make_coordinator(config_.cohort.job);
}

PythonCoordinator::~PythonCoordinator() = default;

int PythonCoordinator::run() {
  py::gil_scoped_release unlocked;
  Coordinator coordinator(config_, registry_);
  return coordinator.run();
}

void PythonCoordinator::stop() { config_.cohort.stop->request(); }

}  // namespace fedra::python
