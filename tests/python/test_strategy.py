"""A FedAvg rule written in Python (fedra.Coordinator(aggregate=...)): the C++ coordinator in this
process, C++ workers as processes over loopback TCP."""
import json
import os
import subprocess
import threading
import time

import pytest
import torch

import fedra
from conftest import FEDRA, Job

DATA = "fmnist:limit=1500,test_limit=500"
JOB = {"model": "mlp:784-32-10", "test_data": DATA, "min_workers": 3, "seed": 5, "threads": 1,
       "fedavg": {"rounds": 2, "local_steps": 10}}


def median(global_model, updates, round):
    return {k: torch.stack([u["weights"][k] for u in updates]).median(0).values for k in global_model}


def python_job(out, aggregate=None, strategy=None, **extra):
    """Runs a job with `aggregate` or `strategy` in this process and three C++ workers; returns its exit code."""
    os.makedirs(out, exist_ok=True)
    port_file = os.path.join(out, "port")
    coordinator = fedra.Coordinator(strategy=strategy, aggregate=aggregate, listen="127.0.0.1:0", port_file=port_file,
                                    out=out, **{**JOB, **extra})
    result = {}
    runner = threading.Thread(target=lambda: result.update(code=coordinator.run()))
    runner.start()
    while not (os.path.exists(port_file) and open(port_file).read().strip()):
        time.sleep(0.02)
    address = "127.0.0.1:" + open(port_file).read().strip()
    workers = [subprocess.Popen([FEDRA, "worker", "--connect", address, "--name", f"w-{i}", "--dataset", DATA,
                                 "--client", f"{i}/3", "--threads", "1", "--log-level", "warn"])
               for i in range(3)]
    runner.join(timeout=300)
    for w in workers:
        w.wait(timeout=60)
    return result.get("code")


def builtin_job(out, *options):
    """The same job as python_job's with the coordinator a `fedra coordinator` process and `options`
    added; returns its model's state dict."""
    job = Job(out, ["--model", "mlp:784-32-10", "--test-data", DATA, "--min-workers", "3", "--seed", "5",
                    "--fedavg.rounds", "2", "--fedavg.local_steps", "10", *options])
    for i in range(3):
        job.cpp_worker(f"w-{i}", ["--dataset", DATA, "--client", f"{i}/3"])
    assert job.finish() == 0, job.coordinator_log()
    return job.model()


def max_difference(want, out):
    got = torch.jit.load(str(out / "model.pt")).state_dict()
    assert list(want) == list(got)
    return max((want[k] - got[k]).abs().max().item() for k in want)


def test_a_median_in_python_gives_the_built_in_median(tmp_path):
    assert python_job(str(tmp_path / "py"), median) == 0
    assert max_difference(builtin_job(tmp_path / "builtin", "--fedavg.aggregate", "median"), tmp_path / "py") == 0


class FedAvgM(fedra.FedAvg):
    """Server momentum (Hsu et al. 2019) in Python: v <- mu v + (x - a); x <- x - lr v."""

    def __init__(self, lr=1.0, mu=0.9):
        self.lr, self.mu, self.v = lr, mu, None

    def server_update(self, global_model, aggregate, round):
        d = {k: global_model[k] - aggregate[k] for k in global_model}
        self.v = d if self.v is None else {k: self.mu * self.v[k] + d[k] for k in d}
        return {k: global_model[k] - self.lr * self.v[k] for k in d}


def test_a_server_update_in_python_gives_the_built_in_server_momentum(tmp_path):
    assert python_job(str(tmp_path / "py"), strategy=FedAvgM()) == 0
    want = builtin_job(tmp_path / "builtin", "--fedavg.server_opt", "momentum", "--fedavg.server_momentum", "0.9")
    assert max_difference(want, tmp_path / "py") < 1e-6


def test_a_server_update_in_python_is_refused_beside_a_server_optimiser():
    with pytest.raises(ValueError, match="Python server_update.*server_opt"):
        fedra.Coordinator(strategy=FedAvgM(), **{**JOB, "fedavg": {"server_opt": "adam"}})


class Schedule(fedra.FedAvg):
    """Each worker's local training from Python: `options(round)` for every worker."""

    def __init__(self, options):
        self.options, self.asked = options, []

    def configure(self, round, worker):
        self.asked.append((round, worker["name"], worker["num_examples"]))
        return self.options(round)


def test_configure_in_python_sets_each_workers_local_training(tmp_path):
    schedule = Schedule(lambda round: {"lr": 0.05, "local_steps": 10})
    assert python_job(str(tmp_path / "py"), strategy=schedule, fedavg={"rounds": 2, "local_steps": 3}) == 0
    assert sorted(schedule.asked) == [(r, f"w-{i}", 500) for r in (1, 2) for i in range(3)]
    assert max_difference(builtin_job(tmp_path / "builtin", "--fedavg.lr", "0.05"), tmp_path / "py") == 0


def test_configure_in_python_asking_what_cannot_run_fails_the_round_with_the_reason(tmp_path):
    schedule = Schedule(lambda round: {"learning_rate": 0.1} if round == 1 else {"lr": -1})
    assert python_job(str(tmp_path / "py"), strategy=schedule) == 1  # no round could run
    lines = [json.dumps(json.loads(l)) for l in open(tmp_path / "py" / "metrics.jsonl")]
    assert len(lines) == 2 and all('"status": "failed"' in l for l in lines)
    assert "'learning_rate', which is not a local training option; it may set: batch_size" in lines[0]
    assert "lr must be > 0" in lines[1]


def test_a_python_rule_that_raises_fails_the_round_with_its_words(tmp_path):
    calls = []

    def broken(global_model, updates, round):
        calls.append(round)
        if round == 1:
            raise ArithmeticError("no median today")
        return {k: v.clone() for k, v in global_model.items()}

    assert python_job(str(tmp_path / "broken"), broken) == 0  # the last round succeeded
    lines = [l for l in open(tmp_path / "broken" / "metrics.jsonl")]
    assert '"status":"failed"' in lines[0].replace(" ", "") and "no median today" in lines[0]
    assert calls == [1, 2]


def test_a_python_rule_is_refused_beside_secure_aggregation():
    with pytest.raises(ValueError, match="secagg gives the coordinator only the sum"):
        fedra.Coordinator(aggregate=median, **{**JOB, "fedavg": {"secagg": True}})


def fednova(global_model, updates, round):
    """FedNova (Wang et al. 2020): each update's change normalised by its local steps, then scaled
    by the weighted mean of the steps, so workers that ran more steps do not pull harder."""
    n = sum(u["num_examples"] for u in updates)
    p = [u["num_examples"] / n for u in updates]
    tau_eff = sum(pi * u["steps"] for pi, u in zip(p, updates))
    out = {}
    for k, g in global_model.items():
        d = sum(pi * (g.double() - u["weights"][k].double()) / u["steps"] for pi, u in zip(p, updates))
        out[k] = (g.double() - tau_eff * d).to(g.dtype)
    return out


def test_fednova_in_python_through_simulate_equals_fedavg_when_every_worker_runs_the_same_steps(tmp_path):
    def train(model, task):
        return fedra.loops.sgd(model, task)

    common = dict(workers=3, rounds=2, dataset=DATA, options={"fedavg.local_steps": 8}, fedra=FEDRA, progress=False,
                  seed=4)
    model = fedra.models.mlp(784, 16, 10)  # its weights are both jobs' initial model
    nova = fedra.simulate(train, model, aggregate=fednova, out=str(tmp_path / "nova"), **common)
    plain = fedra.simulate(train, model, out=str(tmp_path / "plain"), **common)
    assert [m["workers_ok"] for m in nova] == [3, 3]
    a = torch.jit.load(str(tmp_path / "nova" / "model.pt")).state_dict()
    b = torch.jit.load(str(tmp_path / "plain" / "model.pt")).state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
