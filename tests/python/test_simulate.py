"""fedra.simulate: a whole job from Python, Python workers (threads) beside C++ worker processes."""
import time

import pytest
import torch

import fedra
from conftest import FEDRA, mlp


def rows(metrics):
    return metrics.to_dict("records") if hasattr(metrics, "to_dict") else metrics


def test_simulate_runs_python_and_cpp_workers_and_returns_the_metrics(tmp_path, capfd):
    def train(model, task):
        return fedra.loops.sgd(model, task)

    metrics = rows(fedra.simulate(train, mlp(784, 32, 10), workers=2, cpp_workers=1, rounds=2,
                                  dataset="fmnist:limit=1500,test_limit=500", options={"fedavg.local_steps": 20},
                                  out=str(tmp_path / "run"), fedra=FEDRA))
    assert [m["round"] for m in metrics] == [1, 2]
    assert all(m["status"] == "ok" and m["workers_ok"] == 3 for m in metrics)
    assert metrics[-1]["test_accuracy"] > 0.5
    assert "round 2/2  test_accuracy" in capfd.readouterr().err  # the progress lines
    assert (tmp_path / "run" / "model.bin").exists()


def test_simulate_with_the_callers_own_data_and_a_failing_loop(tmp_path):
    torch.manual_seed(0)
    parts = []
    for _ in range(2):
        x = torch.randn(200, 16)
        parts.append((x, (x[:, 0] > 0).long()))

    def train(model, task):
        if task.round == 1 and task.data[0].data_ptr() == parts[1][0].data_ptr():
            raise RuntimeError("this worker's loop broke in round 1")
        x, y = task.data
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for idx in torch.randperm(x.shape[0]).split(20):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
        return loss.item()

    metrics = rows(fedra.simulate(train, mlp(16, 8, 2), workers=2, rounds=2, data=parts,
                                  test_data="synthetic:n=256,features=16,classes=2,seed=3",
                                  options={"fedavg.min_results": 1}, out=str(tmp_path / "own"), fedra=FEDRA,
                                  progress=False))
    assert [m["workers_ok"] for m in metrics] == [1, 2]  # the broken round failed that worker only
    log = open(tmp_path / "own" / "logs" / "coordinator.log").read()
    assert "this worker's loop broke in round 1" in log


def test_simulate_refuses_what_cannot_run():
    with pytest.raises(ValueError, match="needs train"):
        fedra.simulate(None, mlp(4, 2), workers=1)
    with pytest.raises(ValueError, match="data holds 1 parts for 2 Python workers"):
        fedra.simulate(lambda m, t: 0.0, mlp(4, 2), workers=2, data=[(torch.zeros(1, 4), torch.zeros(1))])


def test_a_python_worker_that_stops_ends_the_simulation_at_once_with_its_reason(tmp_path):
    start = time.time()
    with pytest.raises(fedra.SimulationError, match="a Python worker stopped .*py-0: could not convert string"):
        fedra.simulate(lambda model, task: "not a loss", mlp(784, 16, 10), workers=1, rounds=3,
                       dataset="fmnist:limit=500,test_limit=200", out=str(tmp_path / "stop"), fedra=FEDRA,
                       progress=False)
    assert time.time() - start < 60  # not the round's 600 s timeout


def test_fedbuff_takes_python_workers_beside_a_cpp_worker(tmp_path):
    tasks = []

    def train(model, task):
        tasks.append(task.kind)
        return fedra.loops.sgd(model, task)

    metrics = rows(fedra.simulate(train, mlp(784, 16, 10), workers=2, cpp_workers=1, strategy="fedbuff",
                                  dataset="fmnist:limit=1500,test_limit=500",
                                  options={"fedbuff.updates": 4, "fedbuff.buffer": 2, "fedbuff.local_steps": 5,
                                           "fedbuff.eval_every": 4},
                                  out=str(tmp_path / "buff"), fedra=FEDRA, progress=False))
    assert len(metrics) == 4
    assert metrics[-1]["updates_applied"] == 8
    assert set(tasks) == {"async.train"} and len(tasks) >= 4  # the Python workers took their share
