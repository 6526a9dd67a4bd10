#!/usr/bin/python3
"""gradsum (ring and star) against PyTorch DistributedDataParallel / gloo, side by side in one run.

  /usr/bin/python3 benchmarks/gradsum_vs_ddp.py [--fedra build/fedra] [--quick] [--repeat N]

(a) Step time: MLP 784-256-10, batch 64 per worker, 2 workers on loopback, SGD.
    Fedra: `fedra simulate --strategy gradsum` on Fashion-MNIST (coordinator + 2 worker
    processes over TCP, one LibTorch thread each), topology=ring and topology=star; step_ms of
    rounds 2.. (median). Peer: benchmarks/peer/ddp_gloo.py step (2 processes, gloo, one thread each).
(b) Exchanging a 100 MB gradient (mlp:5000-5000 = 25,005,000 float32 = 100.02 MB), with
    exchange_only (workers send a constant gradient without computing):
      ring   worker_exchange_ms: the all-reduce alone, from the first bucket handed to the ring
             to the last chunk in (the buckets are filled first, as gloo's tensor is);
             step_ms adds filling the buckets and every replica's optimiser step;
      star   step_ms: every worker sends its gradient to the coordinator, which sums bucket by
             bucket, steps its optimiser and sends the parameters back;
      gloo   dist.all_reduce of the same number of floats (median of 20).
    For 2 workers, and for 4 (one core for two processes: slower for all three alike).
Ratios are peer time / Fedra time (above 1: Fedra faster). Throughput = 100.02 MB / time.
With --repeat N each measurement runs N times and the table gives the median of the runs.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile

from benchlib import arguments, run_peer
BYTES = 25_005_000 * 4


def fedra(binary, workers, args):
    with tempfile.TemporaryDirectory() as out:
        cmd = [binary, "simulate", "--strategy", "gradsum", "--workers", str(workers), "--threads", "1",
               "--worker-threads", "1", "--test-data", "none", "--log-level", "warn",
               "--gradsum.eval_every", "0", "--out", out] + args
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            sys.exit("fedra simulate failed:\n" + run.stderr)
        return [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]


def median_of(rows, key):
    return statistics.median(r[key] for r in rows[1:])


def exchange(binary, workers, topology, steps):
    rows = fedra(binary, workers, ["--dataset", "synthetic:n=64,features=5000", "--model", "mlp:5000-5000",
                                   "--gradsum.steps", str(steps), "--gradsum.steps_per_round", str(steps // 3),
                                   "--gradsum.exchange_only", "true", "--gradsum.check_every", "0",
                                   "--gradsum.bucket_kb", "4096", "--gradsum.topology", topology])
    return median_of(rows, "step_ms"), (median_of(rows, "worker_exchange_ms") if topology == "ring" else None)


def main():
    ap = arguments()
    ap.add_argument("--repeat", type=int, default=1, help="runs of each measurement (the median is shown)")
    a = ap.parse_args()
    steps, per_round, ex_steps = (600, 150, 12) if a.quick else (2000, 400, 30)
    med = statistics.median

    step = {"ring": [], "star": [], "ddp": []}
    for _ in range(a.repeat):
        for topology in ("ring", "star"):
            rows = fedra(a.fedra, 2, ["--dataset", "fmnist", "--model", "mlp:784-256-10",
                                      "--gradsum.steps", str(steps), "--gradsum.steps_per_round", str(per_round),
                                      "--gradsum.batch_size", "64", "--gradsum.lr", "0.05",
                                      "--gradsum.topology", topology])
            step[topology].append(median_of(rows, "step_ms"))
        step["ddp"].append(peer("step", ["--steps", str(steps)])["step_ms"])

    ex = {}
    for workers in (2, 4):
        r = {"ring_ex": [], "ring_step": [], "star_step": [], "gloo": []}
        for _ in range(a.repeat):
            s, e = exchange(a.fedra, workers, "ring", ex_steps)
            r["ring_step"].append(s)
            r["ring_ex"].append(e)
            r["star_step"].append(exchange(a.fedra, workers, "star", ex_steps)[0])
            r["gloo"].append(peer("allreduce", ["--iters", "20", "--world", str(workers)])["allreduce_ms"])
        ex[workers] = {k: med(v) for k, v in r.items()}

    rs, ss, ds = med(step["ring"]), med(step["star"]), med(step["ddp"])
    print(f"gradsum vs PyTorch DDP (gloo) on loopback, one thread per process, median of {a.repeat} run(s)")
    print(f"(a) step, MLP 784-256-10, batch 64/worker, 2 workers")
    print(f"    ring {rs:6.2f} ms   star {ss:6.2f} ms   DDP {ds:6.2f} ms   "
          f"ratio DDP/ring {ds / rs:4.2f}x (target >= 1.8x: {'met' if ds / rs >= 1.8 else 'NOT met'})   "
          f"DDP/star {ds / ss:4.2f}x")
    for workers, r in ex.items():
        gb = lambda ms: BYTES / ms / 1e6
        print(f"(b) 100 MB gradient exchange, {workers} workers")
        print(f"    ring all-reduce {r['ring_ex']:6.1f} ms = {gb(r['ring_ex']):4.2f} GB/s   "
              f"gloo all_reduce {r['gloo']:6.1f} ms = {gb(r['gloo']):4.2f} GB/s   ratio {r['gloo'] / r['ring_ex']:4.2f}x"
              + (f" (target >= 1.2x: {'met' if r['gloo'] / r['ring_ex'] >= 1.2 else 'NOT met'})" if workers == 2 else ""))
        print(f"    whole step: ring {r['ring_step']:6.1f} ms   star {r['star_step']:6.1f} ms   "
              f"star/ring {r['star_step'] / r['ring_step']:4.2f}x")


def peer(mode, extra):
    return run_peer("ddp_gloo.py", [mode] + extra, "DDP peer")


if __name__ == "__main__":
    main()
