#!/usr/bin/python3
"""Soak: long jobs under faults, every round accounted for.

For each strategy given (default: fedavg, then gradsum), one job with a coordinator and
--workers workers as separate processes over loopback, run by a small supervisor that, like
systemd or Kubernetes would, restarts any worker process that exited, under its name. Faults:
  - every 20-60 s (seeded; --kill-every), SIGKILL of a random worker, restarted after 1-5 s;
  - halfway through the job's rounds, SIGKILL of the coordinator, restarted with --resume.
The jobs are sized to take about --minutes in all (a fault-free calibration run measures the
round time). At the end each job must have completed (summary.json status completed) with
metrics.jsonl holding rounds 1..R exactly once; the script prints a summary (and writes
OUT/soak.json) and exits 1 otherwise.

  benchmarks/soak.py --minutes 30 --out runs/soak      # the long soak (docs/benchmarks.md)
  benchmarks/soak.py --minutes 1                       # the short one CI runs
"""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402

DATA = "fmnist:limit=8000,test_limit=1000"

# The job of each strategy: options beyond the runtime's, and the option that sets its rounds.
JOBS = {
    # Round deadline and min_results: a round goes on without a worker killed mid-round.
    "fedavg": (["--strategy", "fedavg", "--model", "mlp:784-128-10", "--fedavg.local_steps", "300",
                "--fedavg.batch_size", "32", "--fedavg.round_timeout", "20"],
               lambda rounds, workers: ["--fedavg.rounds", str(rounds), "--fedavg.min_results", str(workers // 2)]),
    # Every replica in every step: a round hit by a kill is rolled back and rerun when the worker
    # is back (--round-retries), so no step is lost or taken twice.
    "gradsum": (["--strategy", "gradsum", "--model", "mlp:784-64-10", "--gradsum.batch_size", "32",
                 "--gradsum.step_timeout", "20", "--round-retries", "50"],
                lambda rounds, workers: ["--gradsum.steps", str(rounds * 100), "--gradsum.steps_per_round", "100",
                                         "--gradsum.min_workers", str(workers)]),
}


class Job:
    """One coordinator and its workers, supervised."""

    def __init__(self, fedra, strategy, rounds, workers, out, log):
        self.fedra, self.strategy, self.rounds, self.workers, self.out, self.log = \
            fedra, strategy, rounds, workers, out, log
        base, sized = JOBS[strategy]
        self.options = base + sized(rounds, workers) + ["--test-data", DATA, "--threads", "1",
                                                        "--min-workers", str(workers), "--wait-timeout", "120"]
        self.coordinator = None
        self.procs = {}      # worker name -> Popen
        self.restart_at = {}  # worker name -> time to restart it
        self.port = None
        self.counts = {"worker_kills": 0, "worker_restarts": 0, "coordinator_kills": 0, "resumes": 0}

    def start_coordinator(self, resume):
        port_file = os.path.join(self.out, "port")
        if os.path.exists(port_file):
            os.remove(port_file)
        cmd = [self.fedra, "coordinator", "--listen", "127.0.0.1:0", "--port-file", port_file] + self.options
        cmd += ["--resume", os.path.join(self.out, "run")] if resume else ["--out", os.path.join(self.out, "run")]
        self.coordinator = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        for _ in range(600):
            if os.path.exists(port_file) and open(port_file).read().endswith("\n"):
                self.port = open(port_file).read().strip()
                return
            if self.coordinator.poll() is not None:
                sys.exit(f"{self.strategy}: the coordinator exited ({self.coordinator.returncode}) before listening")
            time.sleep(0.05)
        sys.exit(f"{self.strategy}: the coordinator wrote no port file")

    def start_worker(self, i):
        name = f"worker-{i}"
        cmd = [self.fedra, "worker", "--connect", f"127.0.0.1:{self.port}", "--name", name, "--dataset", DATA,
               "--client", f"{i}/{self.workers}", "--threads", "1", "--connect-timeout", "120"]
        self.procs[name] = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)

    def lines(self):
        path = os.path.join(self.out, "run", "metrics.jsonl")
        if not os.path.exists(path):
            return []
        out = []
        for line in open(path):
            try:
                out.append(json.loads(line))
            except ValueError:
                break
        return out

    def run(self, rng, kill_every, progress, kill_coordinator=True):
        os.makedirs(self.out, exist_ok=True)
        self.start_coordinator(resume=False)
        for i in range(self.workers):
            self.start_worker(i)
        next_kill = time.time() + rng.uniform(*kill_every)
        killed_coordinator = not kill_coordinator
        last_report = 0
        while True:
            now = time.time()
            done = len(self.lines())
            if self.coordinator.poll() is not None:
                code = self.coordinator.returncode
                if code == 0:
                    break
                sys.exit(f"{self.strategy}: the coordinator failed (exit {code}); see {self.log.name}")
            if not killed_coordinator and done >= self.rounds // 2:
                # Halfway: the coordinator dies without a word; a new one resumes from the checkpoint.
                self.coordinator.send_signal(signal.SIGKILL)
                self.coordinator.wait()
                self.counts["coordinator_kills"] += 1
                killed_coordinator = True
                time.sleep(rng.uniform(1, 3))
                self.start_coordinator(resume=True)
                self.counts["resumes"] += 1
                for name, p in list(self.procs.items()):
                    # Workers of the old coordinator may be retrying it on the old port: replace them.
                    p.send_signal(signal.SIGKILL)
                    p.wait()
                    self.restart_at[name] = time.time()
            if now >= next_kill:
                name = rng.choice(sorted(self.procs))
                p = self.procs[name]
                if p.poll() is None:
                    p.send_signal(signal.SIGKILL)
                    p.wait()
                    self.counts["worker_kills"] += 1
                    self.restart_at[name] = now + rng.uniform(1, 5)
                next_kill = now + rng.uniform(*kill_every)
            for name, p in list(self.procs.items()):  # the supervisor: exited workers come back
                if p.poll() is not None and name not in self.restart_at:
                    self.restart_at[name] = now + 1
            for name, at in list(self.restart_at.items()):
                if now >= at:
                    del self.restart_at[name]
                    self.start_worker(int(name.split("-")[1]))
                    self.counts["worker_restarts"] += 1
            if now - last_report > 15:
                last_report = now
                progress(f"{self.strategy}: round {done}/{self.rounds}, {self.counts['worker_kills']} worker kills, "
                         f"{self.counts['coordinator_kills']} coordinator kill(s)")
            time.sleep(0.1)
        for p in self.procs.values():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()

    def verdict(self):
        lines = self.lines()
        summary = json.load(open(os.path.join(self.out, "run", "summary.json")))
        rounds = [l["round"] for l in lines]
        failed_rounds = sum(1 for l in lines if l.get("status") != "ok")
        worker_failures = sum(int(l.get("workers_failed", 0)) for l in lines)
        ok = summary.get("status") == "completed" and rounds == list(range(1, self.rounds + 1))
        last = lines[-1] if lines else {}
        self.log.flush()
        log = [l for l in open(self.log.name, errors="replace") if "[coordinator]" in l]
        return {
            "strategy": self.strategy, "ok": ok, "rounds": self.rounds, "rounds_recorded": len(rounds),
            "each_round_once": rounds == list(range(1, self.rounds + 1)), "status": summary.get("status"),
            "rounds_failed": failed_rounds, "worker_failures_in_rounds": worker_failures,
            "test_accuracy": last.get("test_accuracy"), "elapsed_s": summary.get("elapsed_s"), **self.counts,
            # From the coordinators' logs: workers lost with a request pending, and rounds rolled
            # back and run again (step-driven strategies; such an attempt leaves no metrics line).
            "workers_lost_mid_request": sum("lost mid-request" in l for l in log),
            "rounds_rolled_back": sum("rolling it back" in l for l in log),
        }


def seconds_per_round(fedra, strategy, workers, out):
    """A fault-free run of 6 rounds: the job's round time on this machine (after the first)."""
    os.makedirs(out, exist_ok=True)
    log = open(os.path.join(out, "calibrate.log"), "w")
    job = Job(fedra, strategy, 6, workers, os.path.join(out, "calibrate"), log)
    job.run(random.Random(0), (1e9, 1e9), lambda _: None, kill_coordinator=False)
    lines = job.lines()
    return max(0.2, (lines[-1]["elapsed_s"] - lines[0]["elapsed_s"]) / (len(lines) - 1))


def main():
    ap = benchlib.arguments(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=30, help="about how long the soak runs, all jobs together")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--strategies", default="fedavg,gradsum", help=f"comma-separated, of {', '.join(JOBS)}")
    ap.add_argument("--kill-every", default="20,60", help="seconds between worker kills: MIN,MAX (uniform)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", help="keep the runs here (default: a temporary directory, removed if all passed)")
    a = ap.parse_args()
    out = a.out or tempfile.mkdtemp(prefix="fedra-soak-")
    os.makedirs(out, exist_ok=True)
    strategies = a.strategies.split(",")
    kill_every = tuple(float(x) for x in a.kill_every.split(","))
    rng = random.Random(a.seed)
    t0 = time.time()
    progress = lambda text: print(f"[{time.time() - t0:6.0f} s] {text}", flush=True)  # noqa: E731
    results = []
    for strategy in strategies:
        if strategy not in JOBS:
            sys.exit(f"unknown strategy '{strategy}' (this soak knows {', '.join(JOBS)})")
        per_round = seconds_per_round(a.fedra, strategy, a.workers, os.path.join(out, strategy))
        # Kills and restarts cost time: aim at 80% of the share in fault-free rounds.
        rounds = max(4, int(0.8 * a.minutes * 60 / len(strategies) / per_round))
        progress(f"{strategy}: {per_round:.2f} s per round without faults; {rounds} rounds")
        log = open(os.path.join(out, strategy, "soak.log"), "w")
        job = Job(a.fedra, strategy, rounds, a.workers, os.path.join(out, strategy), log)
        job.run(rng, kill_every, progress)
        results.append(job.verdict())
        progress(json.dumps(results[-1]))
    report = {"minutes": round((time.time() - t0) / 60, 1), "workers": a.workers, "seed": a.seed,
              "kill_every_s": list(kill_every), "jobs": results}
    with open(os.path.join(out, "soak.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))
    if all(r["ok"] for r in results):
        print(f"soak passed: every job completed with each round once ({report['minutes']} min)")
        if not a.out:
            shutil.rmtree(out, ignore_errors=True)
        return 0
    print(f"soak FAILED; runs kept in {out}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
