"""Shared pieces of the Python package's tests: a coordinator and C++ workers as real processes
over loopback TCP, and the Python worker in the test's own process."""
import json
import os
import subprocess
import time

import fedra  # noqa: F401  (before torch: it picks OpenBLAS's kernels as the fedra program does)
import pytest
import torch
from fedra.models import mlp  # noqa: F401  (the tests' model)

FEDRA = os.environ.get("FEDRA", os.path.join(os.path.dirname(__file__), "../../build/fedra"))
DATA = "fmnist:limit=2000,test_limit=500"


class Job:
    """`fedra coordinator` on a free loopback port, its log and outputs in `out`."""

    def __init__(self, out, args):
        self.out = str(out)
        os.makedirs(self.out, exist_ok=True)
        port_file = os.path.join(self.out, "port")
        self.log = os.path.join(self.out, "coordinator.log")
        self.proc = subprocess.Popen([FEDRA, "coordinator", "--listen", "127.0.0.1:0", "--port-file", port_file,
                                      "--out", self.out, "--threads", "1"] + args,
                                     stdout=open(self.log, "w"), stderr=subprocess.STDOUT)
        self.workers = []
        deadline = time.time() + 60
        while not (os.path.exists(port_file) and open(port_file).read().strip()):
            if time.time() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the coordinator did not start:\n" + open(self.log).read())
            time.sleep(0.02)
        self.address = "127.0.0.1:" + open(port_file).read().strip()

    def cpp_worker(self, name, args):
        log = os.path.join(self.out, name + ".log")
        self.workers.append(subprocess.Popen([FEDRA, "worker", "--connect", self.address, "--name", name,
                                              "--threads", "1"] + args,
                                             stdout=open(log, "w"), stderr=subprocess.STDOUT))

    def finish(self, timeout=300):
        code = self.proc.wait(timeout=timeout)
        for w in self.workers:
            w.wait(timeout=60)
        return code

    def coordinator_log(self):
        return open(self.log).read()

    def metrics(self):
        return [json.loads(line) for line in open(os.path.join(self.out, "metrics.jsonl"))]

    def model(self):
        return torch.jit.load(os.path.join(self.out, "model.pt")).state_dict()


@pytest.fixture
def job_dir(tmp_path):
    return tmp_path
