#!/usr/bin/python3
"""gradsum against PyTorch DistributedDataParallel (gloo), side by side in one run.

  /usr/bin/python3 benchmarks/gradsum_vs_ddp.py [--fedra build/fedra] [--quick]

(a) Step time: MLP 784-256-10, batch 64 per worker, 2 workers on loopback, SGD.
    Fedra: `fedra simulate --strategy gradsum` on Fashion-MNIST (coordinator + 2 worker
    processes over TCP, one LibTorch thread each); step_ms of rounds 2.. (median).
    Peer: benchmarks/peer/ddp_gloo.py step (2 processes, gloo, one thread each).
(b) Exchanging a 100 MB gradient between 2 workers: Fedra runs gradsum with exchange_only on
    mlp:5000-5000 (25,005,000 float32 = 100.02 MB): each step every worker sends its whole
    gradient and receives the sum, through the coordinator, which sums bucket by bucket and
    steps its optimiser; step_ms is the whole exchange. Peer: dist.all_reduce of the same
    number of floats (median of 20). Throughput = 100.02 MB / time.
Ratios are peer time / Fedra time (above 1: Fedra faster).
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile

from benchlib import arguments, run_peer
BYTES = 25_005_000 * 4


def fedra(binary, args):
    with tempfile.TemporaryDirectory() as out:
        cmd = [binary, "simulate", "--strategy", "gradsum", "--workers", "2", "--threads", "1",
               "--worker-threads", "1", "--test-data", "none", "--log-level", "warn",
               "--gradsum.eval_every", "0", "--out", out] + args
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            sys.exit("fedra simulate failed:\n" + run.stderr)
        return [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]


def peer(mode, extra):
    return run_peer("ddp_gloo.py", [mode] + extra, "DDP peer")


def main():
    a = arguments().parse_args()
    steps, per_round, ex_steps = (600, 150, 12) if a.quick else (2000, 400, 60)

    rows = fedra(a.fedra, ["--dataset", "fmnist", "--model", "mlp:784-256-10",
                           "--gradsum.steps", str(steps), "--gradsum.steps_per_round", str(per_round),
                           "--gradsum.batch_size", "64", "--gradsum.lr", "0.05"])
    f_step = statistics.median(r["step_ms"] for r in rows[1:])
    d_step = peer("step", ["--steps", str(steps)])["step_ms"]

    rows = fedra(a.fedra, ["--dataset", "synthetic:n=64,features=5000", "--model", "mlp:5000-5000",
                           "--gradsum.steps", str(ex_steps), "--gradsum.steps_per_round", str(ex_steps // 3),
                           "--gradsum.exchange_only", "true",
                           "--gradsum.check_every", "0", "--gradsum.bucket_kb", "4096"])
    f_ex = statistics.median(r["step_ms"] for r in rows[1:])
    g = peer("allreduce", ["--iters", "20"])
    d_ex = g["allreduce_ms"]

    print("gradsum vs PyTorch DDP (gloo), 2 workers on loopback, one thread per process")
    print(f"(a) step, MLP 784-256-10, batch 64/worker   fedra {f_step:7.2f} ms   DDP {d_step:7.2f} ms"
          f"   ratio {d_step / f_step:5.2f}x   (target <= 2.0 ms: {'met' if f_step <= 2.0 else 'NOT met'})")
    print(f"(b) 100 MB gradient exchange                fedra {f_ex:7.1f} ms = {BYTES / f_ex / 1e6:5.2f} GB/s"
          f"   gloo {d_ex:7.1f} ms = {BYTES / d_ex / 1e6:5.2f} GB/s   ratio {d_ex / f_ex:5.2f}x"
          f"   (target >= 1.2 GB/s: {'met' if BYTES / f_ex / 1e6 >= 1.2 else 'NOT met'})")


if __name__ == "__main__":
    main()
