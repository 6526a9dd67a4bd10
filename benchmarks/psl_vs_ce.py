#!/usr/bin/python3
"""PSNet + PSL against PSNet + cross-entropy and LeNet-5 + cross-entropy, trained the same way.

  /usr/bin/python3 benchmarks/psl_vs_ce.py [--epochs 5] [--quick] [--out DIR]

All three on Fashion-MNIST, 5 workers, 100 examples per step in all, Adam lr 0.001, seed 1:
  psnet+psl  experiments/psl-fmnist.cfg: the psl strategy, the coordinator holds the data and
             sends each worker the rows its class towers need; workers differentiate only their
             sub-networks
  psnet+ce   experiments/psnet-ce-fmnist.cfg: gradsum, 5 replicas x 20 examples, mean gradient
  lenet5+ce  the same with --model lenet5
Prints final test accuracy, the best epoch's, bytes on the wire per step (all workers, up +
down) and wall time. --quick: 1 epoch on 12,000 images.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fedra", default=os.path.join(ROOT, "build", "fedra"))
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out")
    a = ap.parse_args()
    epochs = 1 if a.quick else a.epochs
    data = ["--dataset", "fmnist:limit=12000"] if a.quick else []
    exp = os.path.join(ROOT, "experiments")
    runs = {
        "psnet+psl": ["--config", os.path.join(exp, "psl-fmnist.cfg"), "--psl.epochs", str(epochs)],
        "psnet+ce": ["--config", os.path.join(exp, "psnet-ce-fmnist.cfg"), "--gradsum.epochs", str(epochs)],
        "lenet5+ce": ["--config", os.path.join(exp, "psnet-ce-fmnist.cfg"), "--gradsum.epochs", str(epochs),
                      "--model", "lenet5"],
    }
    root = a.out or tempfile.mkdtemp(prefix="psl-vs-ce-")
    rows = []
    for name, args in runs.items():
        print(f"running {name} ...", flush=True)
        out = os.path.join(root, name)
        t0 = time.time()
        r = subprocess.run([a.fedra, "simulate", "--log-level", "warn", "--out", out] + args + data,
                           capture_output=True, text=True)
        wall = time.time() - t0
        if r.returncode != 0:
            sys.exit(f"{name} failed:\n{r.stderr}")
        lines = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
        steps = sum(l["steps"] for l in lines)
        accs = [l["test_accuracy"] for l in lines if "test_accuracy" in l]
        rows.append((name, accs, (lines[-1]["bytes_up"] + lines[-1]["bytes_down"]) / steps, wall, steps))
    print(f"\nFashion-MNIST, 5 workers, batch 100, Adam 0.001, {epochs} epoch(s)")
    print("| run | test accuracy (final) | best epoch | per epoch | KB on the wire per step | steps | wall s |")
    print("|---|---|---|---|---|---|---|")
    for name, accs, bps, wall, steps in rows:
        print(f"| {name} | {accs[-1]:.4f} | {max(accs):.4f} | {' '.join(f'{x:.4f}' for x in accs)} | "
              f"{bps / 1e3:.0f} | {steps} | {wall:.0f} |")
    print(f"\nruns in {root}")


if __name__ == "__main__":
    main()
