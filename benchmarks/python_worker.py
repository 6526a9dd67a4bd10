#!/usr/bin/python3
"""Benchmark: Python workers against C++ workers on the default experiment, side by side in one run.

  /usr/bin/python3 benchmarks/python_worker.py [--rounds 5] [--pairs 2] [--fedra build/fedra]

The default experiment (experiments/fedavg-fmnist.cfg: FedAvg, 10 workers with IID parts of
Fashion-MNIST, MLP 784-200-200-10, 2 local epochs of SGD) with the same coordinator (`fedra
coordinator --config ...`): once with 10 `fedra worker` processes, once with 10 Python processes
(fedra.Worker) whose loop is fedra.loops.sgd, the same training written in Python; the two jobs
alternate --pairs times, so the machine's drift falls on both. A round is `fit_s` of metrics.jsonl
(from configuring the round to having averaged it); the first round is warm-up and left out,
figures are medians over all pairs. Both jobs must end with the same test accuracy
(the Python loop is Fedra's to the bit, and the workers have the same names, from which each
round's seeds are drawn), which the script checks.

Then the zero-copy claim: a 100 MB model (25M float32) handed to Python as task.model and back
through task.reply, in one process, with the data pointers of the tensors compared and the
process's peak RSS before and after.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CONFIG = os.path.join(ROOT, "experiments/fedavg-fmnist.cfg")
TARGET = 1.15
WORKERS = 10

PY_WORKER = """
import sys, fedra
from fedra.loops import sgd
from fedra.models import mlp
address, client = sys.argv[1], sys.argv[2]
model = mlp(784, 200, 200, 10)
worker = fedra.Worker(connect=address, name="worker-" + client.split("/")[0], dataset="fmnist", partition="iid", seed=1,
                      client=client, threads=1, log_level="warn")
for task in worker.tasks():
    model.load_state_dict(task.model)
    loss, steps = sgd(model, task)
    task.reply(model.state_dict(), num_examples=task.data[0].shape[0], metrics={"train_loss": loss, "steps": steps})
"""


def run_job(fedra, rounds, python):
    out = tempfile.mkdtemp(prefix="fedra-pyw-")
    port_file = os.path.join(out, "port")
    coordinator = subprocess.Popen([fedra, "coordinator", "--config", CONFIG, "--listen", "127.0.0.1:0", "--port-file",
                                    port_file, "--min-workers", str(WORKERS), "--fedavg.rounds", str(rounds),
                                    "--out", out, "--threads", "1", "--log-level", "warn"])
    while not (os.path.exists(port_file) and open(port_file).read().strip()):
        if coordinator.poll() is not None:
            sys.exit("the coordinator did not start")
        time.sleep(0.05)
    address = "127.0.0.1:" + open(port_file).read().strip()
    env = dict(os.environ, PYTHONPATH=os.path.join(os.path.dirname(fedra), "python"))
    workers = []
    for i in range(WORKERS):
        client = f"{i}/{WORKERS}"
        if python:
            argv = [sys.executable, "-c", PY_WORKER, address, client]
        else:
            argv = [fedra, "worker", "--config", CONFIG, "--connect", address, "--client", client, "--threads", "1",
                    "--log-level", "warn", "--name", f"worker-{i}"]
        workers.append(subprocess.Popen(argv, env=env))
    code = coordinator.wait()
    for w in workers:
        w.wait()
    if code != 0:
        sys.exit(f"the {'Python' if python else 'C++'} job failed (exit {code}); its outputs are in {out}")
    return [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]


def zero_copy():
    """A 25M-float model through task.model and task.reply in one process, pointers compared."""
    script = """
import resource, sys, fedra, torch
from collections import OrderedDict
from torch import nn
model = nn.Sequential(OrderedDict(flatten=nn.Flatten(), fc1=nn.Linear(5000, 5000)))
w = fedra.Worker(connect=sys.argv[1], name="big", num_examples=10, log_level="warn")
for task in w.tasks():
    m = task.model
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ptr_in = m["fc1.weight"].data_ptr()
    again = task.model["fc1.weight"].data_ptr()
    state = OrderedDict((k, v.add_(0)) for k, v in m.items())  # trained in place: the worker's own tensors
    task.reply(state, num_examples=10, metrics={"train_loss": 0.0})
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"{m['fc1.weight'].numel() * 4 / 1e6:.1f} MB weight: task.model twice at the same address {ptr_in == again}; "
          f"peak RSS {rss0 / 1024:.0f} MB before the reply, {rss1 / 1024:.0f} MB after (+{(rss1 - rss0) / 1024:.0f} MB)",
          flush=True)
"""
    return script


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fedra", default=os.path.join(ROOT, "build/fedra"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--pairs", type=int, default=2, help="C++ then Python jobs, this many times (the machine's "
                    "speed drifts: alternating keeps the drift out of the ratio)")
    a = ap.parse_args()
    cpp_rounds, py_rounds, finals = [], [], []
    for pair in range(a.pairs):
        cpp = run_job(a.fedra, a.rounds, python=False)
        py = run_job(a.fedra, a.rounds, python=True)
        cpp_rounds += [l["fit_s"] for l in cpp[1:]]
        py_rounds += [l["fit_s"] for l in py[1:]]
        finals.append((cpp[-1]["test_accuracy"], py[-1]["test_accuracy"]))
        ratio = statistics.median(l["fit_s"] for l in py[1:]) / statistics.median(l["fit_s"] for l in cpp[1:])
        print(f"pair {pair + 1}: ratio {ratio:.3f}x", flush=True)
    cpp_s, py_s = statistics.median(cpp_rounds), statistics.median(py_rounds)
    same = all(c == p for c, p in finals)
    print(f"default experiment (FedAvg, {WORKERS} workers, mlp:784-200-200-10, 2 local epochs), median of rounds "
          f"2-{a.rounds} of {a.pairs} job(s) each, alternating")
    print(f"  C++ workers     round {cpp_s * 1000:8.1f} ms   final test_accuracy {finals[-1][0]:.4f}")
    print(f"  Python workers  round {py_s * 1000:8.1f} ms   final test_accuracy {finals[-1][1]:.4f}"
          f" ({'the same in every pair' if same else 'DIFFERENT'})")
    print(f"ratio python/c++: {py_s / cpp_s:.3f}x;  target <= {TARGET}x: {'met' if py_s / cpp_s <= TARGET else 'NOT met'}")

    out = tempfile.mkdtemp(prefix="fedra-pyw-big-")
    port_file = os.path.join(out, "port")
    coordinator = subprocess.Popen([a.fedra, "coordinator", "--listen", "127.0.0.1:0", "--port-file", port_file,
                                    "--model", "mlp:5000-5000", "--test-data", "none", "--fedavg.rounds", "1",
                                    "--out", out, "--log-level", "warn"])
    while not (os.path.exists(port_file) and open(port_file).read().strip()):
        time.sleep(0.05)
    env = dict(os.environ, PYTHONPATH=os.path.join(os.path.dirname(a.fedra), "python"))
    subprocess.run([sys.executable, "-c", zero_copy(), "127.0.0.1:" + open(port_file).read().strip()], env=env)
    coordinator.wait()


if __name__ == "__main__":
    main()
