"""Shared by the tests in tests/deploy: named checks that print ok/FAIL and a result code, the
metrics a run wrote, and a coordinator's --port-file."""
import json
import os
import time


class Checks:
    def __init__(self):
        self.failures = []

    def __call__(self, cond, what):
        print(("ok   " if cond else "FAIL ") + what, flush=True)
        if not cond:
            self.failures.append(what)

    def result(self, where):
        """The exit code: 1 with a count and where to look if any check failed, else 0."""
        if self.failures:
            print(f"{len(self.failures)} check(s) failed; files in {where}")
            return 1
        return 0


def round_metrics(out_dir):
    """metrics.jsonl's rows that carry an evaluation (one per round)."""
    path = os.path.join(out_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if "test_accuracy" in r]


def wait_for_port(path, process, seconds=30):
    """The port a coordinator wrote to --port-file PATH; fails if it exits or takes too long."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if os.path.exists(path):
            text = open(path).read().strip()
            if text:
                return text
        if process.poll() is not None:
            raise RuntimeError(f"the coordinator exited with {process.returncode} before writing {path}")
        time.sleep(0.05)
    raise RuntimeError(f"no port in {path} after {seconds} s")
