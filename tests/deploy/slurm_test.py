#!/usr/bin/python3
"""deploy/slurm/fedra.sbatch on a real Slurm: starts a single-node cluster from Debian's packages
(munged, slurmctld, slurmd) configured in a temporary directory, submits a FedAvg job with
`sbatch --wait` (one coordinator and two workers over mutual TLS, srun --multi-prog), and checks
that it completed, its metrics, and that every worker task found its rank in SLURM_PROCID /
SLURM_NTASKS.

Exits 77 (skipped) with the reason where it cannot run: not root, the Slurm or munge packages
missing, or daemons that do not come up (a container without what they need).

usage: slurm_test.py FEDRA_BINARY SOURCE_DIR WORK_DIR"""
import json
import os
import shutil
import socket
import subprocess
import sys
import time

from deploylib import Checks, round_metrics

FEDRA = os.path.abspath(sys.argv[1])
SOURCE = os.path.abspath(sys.argv[2])
WORK = os.path.abspath(sys.argv[3])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MiniSlurm:
    """munged + slurmctld + slurmd for this machine alone, everything under `root`."""

    def __init__(self, root):
        self.root = root
        os.makedirs(f"{root}/state")
        os.makedirs(f"{root}/spool")
        os.chmod(root, 0o755)  # munged wants its socket's directory searchable by all
        self.node = socket.gethostname().split(".")[0]
        with open(f"{root}/munge.key", "wb") as f:
            f.write(os.urandom(1024))
        os.chmod(f"{root}/munge.key", 0o400)
        self.conf = f"{root}/slurm.conf"
        cpus = 8  # more than the machine has (config_overrides): 3 tasks fit on 2 cores
        with open(self.conf, "w") as f:
            f.write(f"""ClusterName=fedratest
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root}/munge.sock
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=2000 State=UNKNOWN
PartitionName=fedra Nodes=ALL Default=YES MaxTime=30 State=UP
""")
        self.env = dict(os.environ, SLURM_CONF=self.conf)
        self.procs = []
        log = open(f"{root}/daemons.log", "w")
        self.procs.append(subprocess.Popen(
            ["munged", "-F", "--force", f"--key-file={root}/munge.key", f"--socket={root}/munge.sock",
             f"--pid-file={root}/munged.pid", f"--log-file={root}/munged.log", f"--seed-file={root}/munged.seed"],
            stdout=log, stderr=subprocess.STDOUT))
        self._wait(lambda: os.path.exists(f"{root}/munge.sock"), 10, "munged did not create its socket")
        self.procs.append(subprocess.Popen(["slurmctld", "-D", "-i", "-f", self.conf], env=self.env, stdout=log,
                                           stderr=subprocess.STDOUT))
        self.procs.append(subprocess.Popen(["slurmd", "-D", "-f", self.conf, "-N", self.node], env=self.env,
                                           stdout=log, stderr=subprocess.STDOUT))
        self._wait(self._idle, 40, "the node did not become idle")

    def _idle(self):
        for p in self.procs:
            if p.poll() is not None:
                raise OSError(f"{p.args[0]} exited with {p.returncode}: {self.tail()}")
        r = subprocess.run(["sinfo", "-h", "-o", "%t"], env=self.env, stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True)
        return r.returncode == 0 and r.stdout.strip() == "idle"

    def _wait(self, cond, seconds, what):
        deadline = time.monotonic() + seconds
        while not cond():
            if time.monotonic() > deadline:
                raise OSError(f"{what} within {seconds} s: {self.tail()}")
            time.sleep(0.2)

    def tail(self):
        out = []
        for name in ("daemons.log", "slurmctld.log", "slurmd.log", "munged.log"):
            path = f"{self.root}/{name}"
            if os.path.exists(path):
                lines = [l for l in open(path, errors="replace").read().splitlines() if "error" in l.lower()]
                out += [f"{name}: {l}" for l in lines[-3:]]
        return " | ".join(out) or "(no errors logged)"

    def close(self):
        for p in reversed(self.procs):
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def main():
    if os.geteuid() != 0:
        print("skipped: the test cluster's daemons run as root (munged, slurmctld, slurmd)")
        return 77
    missing = [t for t in ("munged", "slurmctld", "slurmd", "sbatch", "sinfo") if shutil.which(t) is None]
    if missing:
        print(f"skipped: {', '.join(missing)} not installed (Debian: munge slurmctld slurmd slurm-client; "
              "scripts/setup.sh installs them)")
        return 77
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    try:
        cluster = MiniSlurm(os.path.join(WORK, "cluster"))
    except OSError as e:
        print(f"skipped: a single-node Slurm cluster does not come up here: {e}")
        return 77
    check = Checks()
    try:
        job_dir = os.path.join(WORK, "job")
        cfg = os.path.join(SOURCE, "experiments", "fedavg-fmnist.cfg")
        env = dict(cluster.env, FEDRA=FEDRA, FEDRA_JOB_DIR=job_dir)
        cmd = ["sbatch", "--wait", "--parsable", "--ntasks=3", f"--output={WORK}/slurm-%j.out", "--time=10",
               os.path.join(SOURCE, "deploy", "slurm", "fedra.sbatch"),
               "--config", cfg, "--fedavg.rounds", "2", "--fedavg.local_epochs", "1", "--model", "mlp:784-64-10",
               "--test-data", "fmnist:limit=2000", "--", "--dataset", "fmnist:limit=4000"]
        start = time.monotonic()
        r = subprocess.run(cmd, env=env, cwd=WORK, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=300)
        elapsed = time.monotonic() - start
        job_id = r.stdout.strip().splitlines()[0] if r.stdout.strip() else "?"
        out_path = os.path.join(WORK, f"slurm-{job_id}.out")
        out = open(out_path, errors="replace").read() if os.path.exists(out_path) else ""
        print(f"     sbatch job {job_id}: exit {r.returncode} after {elapsed:.1f} s; output {out_path}")
        check(r.returncode == 0, f"sbatch --wait: the job exited 0 (got {r.returncode}; {r.stdout.strip()[-300:]})")
        for i in range(2):
            check(f"placement: client {i}/2 from SLURM_PROCID={i + 1}, SLURM_NTASKS=3 (Slurm), --rank-offset 1" in out,
                  f"task {i + 1} found its rank: client {i}/2 from SLURM_PROCID={i + 1}, SLURM_NTASKS=3")
            check(f"worker worker-{i} joined from" in out and f"CN = worker-{i}'" in out,
                  f"worker-{i} joined with its own certificate")
        addr = open(os.path.join(job_dir, "coordinator.addr")).read().strip() if os.path.exists(
            os.path.join(job_dir, "coordinator.addr")) else ""
        check(addr.startswith(cluster.node + ":"), f"coordinator.addr names the coordinator's node ({addr})")
        summary_path = os.path.join(job_dir, "summary.json")
        summary = json.load(open(summary_path)) if os.path.exists(summary_path) else {}
        check(summary.get("status") == "completed", f"summary.json in the job directory: {summary.get('status')}")
        accs = [r["test_accuracy"] for r in round_metrics(job_dir)]
        check(len(accs) == 2 and accs[-1] > 0.5, f"metrics.jsonl: 2 rounds, accuracy {accs}")
        check(os.path.exists(os.path.join(job_dir, "model.pt")), "model.pt in the job directory")
        if check.failures:
            print(out[-3000:])
    finally:
        cluster.close()
    return check.result(WORK)


if __name__ == "__main__":
    sys.exit(main())
