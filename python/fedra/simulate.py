"""fedra.simulate: a whole job from a script or a notebook.

A `fedra coordinator` process, C++ `fedra worker` processes and Python workers (threads of this
process, each running your training function on its own copy of the model), over loopback TCP
exactly as separate machines would run them. Returns the metrics, one dict per round.
"""
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback

from . import _coordinator, _program, _worker

__all__ = ["simulate", "SimulationError"]


class SimulationError(RuntimeError):
    """The job failed; the message holds the coordinator's reason and where its log is."""


def _fedra_binary(given):
    """The fedra program: as given, the one inside an installed wheel, the build tree's, or on PATH."""
    if given:
        return given
    here = os.path.dirname(os.path.abspath(__file__))
    for candidate in (_program.path(), os.path.join(here, "..", "..", "fedra"), shutil.which("fedra")):
        if candidate and os.path.isfile(candidate):
            return os.path.abspath(candidate)
    raise FileNotFoundError("cannot find the fedra program: pass fedra='.../build/fedra'")


def _model_spec(model, out):
    """A Fedra model spec for `model`: a spec string as it is, an nn.Module scripted to out/model-in.pt."""
    if isinstance(model, str):
        return model
    import torch
    path = os.path.join(out, "model-in.pt")
    torch.jit.script(model).save(path)
    return "torchscript:" + path


class _InProcess:
    """fedra.Coordinator on a thread of this process, with subprocess.Popen's poll/wait/terminate."""

    def __init__(self, args, hooks):
        from . import _fedra
        self._native = _fedra.Coordinator(args, **hooks)
        self.returncode = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        code = 1
        try:
            code = self._native.run()
        finally:
            self.returncode = code

    def poll(self):
        return self.returncode

    def wait(self, timeout=None):
        self._thread.join(timeout)
        return self.returncode

    def terminate(self):
        self._native.stop()

    kill = terminate


def _python_worker(i, n, address, make_model, train, evaluate, data, worker_options, errors):
    """One Python worker: answers every task with train(model, task) (or evaluate) on its own model."""
    try:
        own = data[i] if data is not None else None
        kwargs = dict(worker_options)
        if own is None:
            kwargs["client"] = f"{i}/{n}"
        else:
            kwargs.pop("dataset", None)
            kwargs["num_examples"] = int(own[0].shape[0])
        worker = _worker.Worker(connect=address, name=f"py-{i}", **kwargs)
        model = make_model()
        for task in worker.tasks():
            if own is not None:
                task._data = own
            model.load_state_dict(task.model)
            if task.kind == "fedavg.evaluate":
                _evaluate(i, model, task, evaluate)
                continue
            try:
                result = train(model, task)
            except Exception:  # the user's loop failed: this task fails with the traceback, the worker stays
                task.fail(f"py-{i}: the training function raised:\n{traceback.format_exc()}")
                continue
            loss, steps = result if isinstance(result, tuple) else (result, 0)
            examples = task.data[0].shape[0] if task.data is not None else 1
            task.reply(model.state_dict(), num_examples=examples,
                       metrics={"train_loss": float(loss or 0.0), "steps": int(steps)})
    except Exception as e:  # noqa: BLE001: reported by simulate()
        errors.append(f"py-{i}: {e}")
        print(f"fedra.simulate: Python worker py-{i} stopped: {traceback.format_exc()}", file=sys.stderr, flush=True)


def _evaluate(i, model, task, evaluate):
    if evaluate is None:
        task.fail(f"py-{i}: federated evaluation on the workers' own data needs simulate(evaluate=...)")
        return
    try:
        num_examples, loss, correct = evaluate(model, task)
    except Exception:  # noqa: BLE001: this task fails with the traceback, the worker stays
        task.fail(f"py-{i}: the evaluate function raised:\n{traceback.format_exc()}")
        return
    task.reply_evaluation(num_examples, loss, correct)


def _progress(line, total):
    parts = [f"round {line.get('round')}" + (f"/{total}" if total else "")]
    for key in ("test_accuracy", "test_loss", "train_loss"):
        if isinstance(line.get(key), (int, float)):
            parts.append(f"{key} {line[key]:.4f}")
    parts.append(f"workers {line.get('workers_ok', '?')} ok/{line.get('workers_failed', '?')} failed")
    print("  ".join(parts), file=sys.stderr, flush=True)


def simulate(train=None, model="mlp:784-200-10", *, workers=4, cpp_workers=0, rounds=5, strategy="fedavg",
             dataset="fmnist", partition="iid", data=None, test_data=None, options=None, seed=1, threads=1,
             out=None, fedra=None, progress=True, log_level="warn", timeout=3600, aggregate=None, evaluate=None):
    """Runs one job and returns its metrics: a list of dicts (a pandas DataFrame if pandas is there).

    train        train(model, task) -> train_loss or (train_loss, steps): your local training, in
                 place on `model` (the global model loaded); task.config and task.data as for a
                 fedra.Worker (docs/python.md). Needed when workers > 0.
    model        an nn.Module (scripted for the coordinator; each Python worker trains a copy) or a
                 Fedra model spec ("mlp:784-200-10"; then make the module yourself: model_fn=...)
    rounds       FedAvg's rounds; other strategies take their length in options ({"split.epochs": 3})
    workers      Python workers (threads of this process, each a worker of its own)
    cpp_workers  C++ `fedra worker` processes beside them (Fedra's own loop)
    strategy     any strategy of `fedra strategies`; options: {"fedavg.server_opt": "adam", ...}; or
                 an instance of a fedra.FedAvg subclass (your configure, aggregate, server_update)
    dataset      a Fedra dataset spec each worker takes its part of (partition, by client index), or
    data         a list of (inputs, targets), one per Python worker: your own data
    test_data    the coordinator's evaluation data (default: the dataset's test split)
    out          the run's directory (metrics.jsonl, summary.json, model.bin, logs; default: temporary)
    progress     a line per round on stderr as the job runs
    evaluate     evaluate(model, task) -> (num_examples, loss, correct): the Python workers' part of
                 federated evaluation (options {"fedavg.fed_eval_every": 1}) on data you choose
                 (fedra.loops.evaluate computes the figures as Fedra does)
    aggregate    FedAvg's rule in Python, aggregate(global, updates, round) -> dict of tensors
                 (fedra.Coordinator); the coordinator then runs in this process
    """
    if workers > 0 and train is None:
        raise ValueError("simulate needs train(model, task) for its Python workers (or workers=0)")
    if isinstance(model, str) and workers > 0:
        raise ValueError("Python workers need the model as an nn.Module (each trains a copy of it)")
    if aggregate is not None and isinstance(strategy, str) and strategy != "fedavg":
        raise ValueError(f"aggregate= is FedAvg's rule: it needs strategy='fedavg', not '{strategy}'")
    # FedAvg's parts in Python, if any: then the coordinator runs in this process
    hooks = _coordinator._hooks(None if isinstance(strategy, str) else strategy, aggregate)
    if not isinstance(strategy, str):
        strategy = "fedavg"
    if data is not None and len(data) != workers:
        raise ValueError(f"data holds {len(data)} parts for {workers} Python workers")
    fedra = _fedra_binary(fedra)
    out = os.path.abspath(out or tempfile.mkdtemp(prefix="fedra-simulate-"))
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    spec = _model_spec(model, out)
    total = workers + cpp_workers
    port_file = os.path.join(out, "port")
    if os.path.exists(port_file):
        os.remove(port_file)
    # FedAvg's rounds; every other strategy says its length in its own options ({"split.epochs": 3}).
    rounds_option = ["--fedavg.rounds", str(rounds)] if strategy == "fedavg" else []
    coordinator_log = os.path.join(out, "logs", "coordinator.log")
    args = ["--listen", "127.0.0.1:0", "--port-file", port_file, "--out", out, "--strategy", strategy, "--model", spec,
            "--min-workers", str(total), "--seed", str(seed), "--test-data", test_data or dataset, "--threads",
            str(threads)] + rounds_option + _worker._args(options)
    if not hooks:
        coordinator = subprocess.Popen([fedra, "coordinator"] + args, stdout=open(coordinator_log, "w"),
                                       stderr=subprocess.STDOUT)
    else:  # parts in Python: the coordinator runs in this process, its log on stderr
        coordinator = _InProcess(args + ["--log-level", log_level], hooks)
        with open(coordinator_log, "w") as f:
            f.write("(the coordinator ran in the Python process: its log went to stderr)\n")
    deadline = time.time() + 60
    while not (os.path.exists(port_file) and open(port_file).read().strip()):
        if coordinator.poll() is not None or time.time() > deadline:
            coordinator.kill()
            raise SimulationError("the coordinator did not start:\n" + open(coordinator_log).read())
        time.sleep(0.02)
    address = "127.0.0.1:" + open(port_file).read().strip()

    children = []
    for i in range(workers, total):  # C++ workers take the clients after the Python ones
        log = open(os.path.join(out, "logs", f"worker-{i}.log"), "w")
        children.append(subprocess.Popen(
            [fedra, "worker", "--connect", address, "--name", f"worker-{i}", "--dataset", dataset, "--partition",
             partition, "--client", f"{i}/{total}", "--seed", str(seed), "--threads", str(threads), "--log-level",
             log_level], stdout=log, stderr=subprocess.STDOUT))
    errors = []
    worker_options = dict(dataset=dataset, partition=partition, seed=seed, threads=threads, log_level=log_level)
    make_model = (lambda: copy.deepcopy(model)) if not isinstance(model, str) else None
    threads_ = [threading.Thread(target=_python_worker, daemon=True,
                                 args=(i, total, address, make_model, train, evaluate, data, worker_options, errors))
                for i in range(workers)]
    for t in threads_:
        t.start()

    metrics_path = os.path.join(out, "metrics.jsonl")
    shown = 0
    started = time.time()
    while coordinator.poll() is None:
        if time.time() - started > timeout or errors:
            coordinator.terminate()  # ends the job: summary.json says interrupted, the workers are told
            coordinator.wait(timeout=60)
            for c in children:
                c.wait(timeout=30)
            why = f"a Python worker stopped ({'; '.join(errors)})" if errors else f"the job ran past {timeout} s"
            raise SimulationError(f"{why}; the coordinator's log: {coordinator_log}")
        if progress and os.path.exists(metrics_path):
            lines = open(metrics_path).read().splitlines()
            for line in lines[shown:]:
                _progress(json.loads(line), rounds if strategy == "fedavg" else None)
            shown = len(lines)
        time.sleep(0.1)
    for t in threads_:
        t.join(timeout=30)
    for c in children:
        c.wait(timeout=30)
    lines = [json.loads(l) for l in open(metrics_path)] if os.path.exists(metrics_path) else []
    if progress:
        for line in lines[shown:]:
            _progress(line, rounds if strategy == "fedavg" else None)
    if coordinator.returncode != 0:
        tail = open(coordinator_log).read().splitlines()[-5:]
        raise SimulationError(f"the job failed (coordinator exit {coordinator.returncode}); "
                              f"{'; '.join(errors) + '; ' if errors else ''}its log ends:\n" + "\n".join(tail))
    try:
        import pandas
        return pandas.DataFrame(lines)
    except ImportError:
        return lines
