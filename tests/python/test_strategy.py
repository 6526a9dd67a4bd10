"""A FedAvg rule written in Python (fedra.Coordinator(aggregate=...)): the C++ coordinator in this
process, C++ workers as processes over loopback TCP."""
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


def python_job(out, aggregate, **extra):
    """Runs a job with `aggregate` in this process and three C++ workers; returns (code, out)."""
    os.makedirs(out, exist_ok=True)
    port_file = os.path.join(out, "port")
    coordinator = fedra.Coordinator(aggregate=aggregate, listen="127.0.0.1:0", port_file=port_file, out=out,
                                    **{**JOB, **extra})
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


def test_a_median_in_python_gives_the_built_in_median(tmp_path):
    assert python_job(str(tmp_path / "py"), median) == 0
    builtin = Job(tmp_path / "builtin", ["--model", "mlp:784-32-10", "--test-data", DATA, "--min-workers", "3",
                                          "--seed", "5", "--fedavg.rounds", "2", "--fedavg.local_steps", "10",
                                          "--fedavg.aggregate", "median"])
    for i in range(3):
        builtin.cpp_worker(f"w-{i}", ["--dataset", DATA, "--client", f"{i}/3"])
    assert builtin.finish() == 0, builtin.coordinator_log()
    want = builtin.model()
    got = torch.jit.load(str(tmp_path / "py" / "model.pt")).state_dict()
    assert list(want) == list(got)
    assert max((want[k] - got[k]).abs().max().item() for k in want) == 0


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
