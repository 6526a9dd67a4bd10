#!/usr/bin/python3
"""tensor and pipeline with their tensors through the coordinator (topology=star) and over direct
worker-to-worker links (tensor: ring, pipeline: chain), side by side on Fashion-MNIST.

  /usr/bin/python3 benchmarks/model_parallel_links.py [--repeats 3] [--epochs 2] [--cases all] [--quick]

Each run is `fedra simulate --config experiments/{tensor,pipeline}-fmnist.cfg` (the 2NN,
MLP 784-200-200-10, batch 64, SGD lr 0.05 momentum 0.9; tensor: every layer split across the
workers; pipeline: weight stashing) with `--STRATEGY.topology` star or ring/chain. The cases:
  tensor-2     tensor, 2 workers (the config)
  tensor-3     tensor, 3 workers
  pipeline-2   pipeline, 2 stages, 2 micro-batches in flight (the config)
  pipeline-2s  pipeline, 2 stages, 1 in flight (sequential: every hop is on the critical path)
  pipeline-3   pipeline, 3 stages, 3 in flight
Star and direct runs alternate, so drift on the machine hits both alike.
Prints per strategy the median over repeats of the mean step time (the coordinator's `step_ms`:
a round's fit time over its steps), the test accuracy after the last epoch, the bytes the
coordinator received per worker and round, the bytes the workers sent each other, and the
speed-up star / direct. Both topologies run the same schedule with sums in the same order, so
the accuracy is the same to the bit (tests/integration/parallel_test.cc checks the weights).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import benchlib

DIRECT = {"tensor": "ring", "pipeline": "chain"}
CASES = {  # name: (strategy, workers, extra options)
    "tensor-2": ("tensor", 2, []),
    "tensor-3": ("tensor", 3, []),
    "pipeline-2": ("pipeline", 2, ["--pipeline.in_flight", "2"]),
    "pipeline-2s": ("pipeline", 2, ["--pipeline.in_flight", "1"]),
    "pipeline-3": ("pipeline", 3, ["--pipeline.in_flight", "3"]),
}


def run(fedra, strategy, parts, extra, topology, epochs, quick, out):
    cmd = [fedra, "simulate", "--config", os.path.join(benchlib.ROOT, "experiments", f"{strategy}-fmnist.cfg"),
           "--workers", str(parts), f"--{strategy}.epochs", str(epochs), f"--{strategy}.topology", topology,
           f"--{strategy}.{'workers' if strategy == 'tensor' else 'stages'}", str(parts),
           "--log-level", "warn", "--out", out] + extra
    if quick:
        cmd += ["--dataset", "fmnist:limit=12000", "--test-data", "fmnist:test_limit=2000"]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}")
    lines = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    if any(l.get("topology") != topology for l in lines):
        sys.exit(f"{out}: a round ran with topology {lines[-1].get('topology')}, not {topology}")
    step_ms = statistics.mean(l["step_ms"] for l in lines)
    up = statistics.mean(sum(v for k, v in l.items() if k.startswith("bytes_up.")) / parts for l in lines)
    peer = statistics.mean(l.get("peer_bytes", 0) for l in lines)
    return {"step_ms": step_ms, "accuracy": lines[-1]["test_accuracy"], "up": up, "peer": peer}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fedra", default=os.path.join(benchlib.ROOT, "build", "fedra"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--cases", default="all", help="comma-separated: " + ", ".join(CASES))
    ap.add_argument("--quick", action="store_true", help="12,000 images, 1 epoch, 1 repeat")
    args = ap.parse_args()
    if args.quick:
        args.epochs, args.repeats = 1, 1
    names = list(CASES) if args.cases == "all" else args.cases.split(",")
    for name in names:
        if name not in CASES:
            sys.exit(f"--cases: no case '{name}'; the cases are {', '.join(CASES)}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            strategy, parts, extra = CASES[name]
            results = {"star": [], DIRECT[strategy]: []}
            for r in range(args.repeats):
                for topology in results:
                    out = os.path.join(tmp, f"{name}-{topology}-{r}")
                    res = run(args.fedra, strategy, parts, extra, topology, args.epochs, args.quick, out)
                    results[topology].append(res)
                    print(f"  {name} {topology:5s} run {r + 1}: {res['step_ms']:.3f} ms/step, "
                          f"accuracy {res['accuracy']:.4f}", flush=True)
            rows.append((name, strategy, results))

    print(f"\nmodel-parallel links: {args.epochs} epoch(s) of Fashion-MNIST{' (12,000 images)' if args.quick else ''}, "
          f"median of {args.repeats} run(s) per cell")
    print(f"{'case':12s} {'topology':8s} {'ms/step':>8s} {'runs':>30s} {'accuracy':>8s} "
          f"{'coord KiB up/worker/round':>25s} {'peer MiB/round':>14s}")
    for name, strategy, results in rows:
        med = {}
        for topology, runs in results.items():
            med[topology] = statistics.median(x["step_ms"] for x in runs)
            print(f"{name:12s} {topology:8s} {med[topology]:8.3f} "
                  f"{', '.join('%.3f' % x['step_ms'] for x in runs):>30s} {runs[-1]['accuracy']:8.4f} "
                  f"{statistics.median(x['up'] for x in runs) / 1024:25.1f} "
                  f"{statistics.median(x['peer'] for x in runs) / 2**20:14.2f}")
        direct = DIRECT[strategy]
        print(f"{'':12s} star / {direct}: {med['star'] / med[direct]:.2f}x step time")


if __name__ == "__main__":
    main()
