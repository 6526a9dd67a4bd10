#!/usr/bin/python3
"""FedAvg and split learning on the same data, model, partition and seed: one comparison table.

  /usr/bin/python3 benchmarks/fedavg_vs_split.py [--workers 2] [--epochs 3] [--quick] [--out DIR]

Runs, one after the other on this machine (each process one LibTorch thread):
  fedavg   fedra simulate --strategy fedavg, `epochs` rounds of 1 local epoch
  split    fedra simulate --strategy split (sequential, weights passed on), `epochs` epochs
  split-u  the same, U-shaped (labels=worker, --private-labels)
  train    fedra train: the whole net in one process (2 threads), the reference accuracy
all on Fashion-MNIST with McMahan's CNN (split cut after pool1), IID partition, batch 32,
SGD lr 0.01 momentum 0.9, seed 1. Prints final test accuracy, bytes on the wire per worker per
epoch (up + down) next to the closed forms of Singh et al. (docs/strategies.md), and wall time.
--quick uses 6,000 training images (a smoke run). --out keeps each run's files and results.csv.
"""
import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

CNN_WEIGHTS = 1_663_370
BOTTOM_WEIGHTS = 832         # conv1: 32 x 1 x 5 x 5 + 32
CUT_FLOATS = 32 * 14 * 14    # pool1 output per example


def run(cmd, out):
    t0 = time.time()
    r = subprocess.run(cmd + ["--out", out, "--log-level", "warn"], capture_output=True, text=True)
    wall = time.time() - t0
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr}")
    return [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))], wall


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fedra", default=os.path.join(ROOT, "build", "fedra"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", help="keep the runs here (default: a temporary directory)")
    a = ap.parse_args()
    data = "fmnist:limit=6000" if a.quick else "fmnist"
    p = 6000 if a.quick else 60000
    K, E = a.workers, a.epochs
    base = ["--dataset", data, "--partition", "iid", "--seed", "1", "--loss", "ce"]
    sim = [a.fedra, "simulate", "--workers", str(K), "--threads", "1", "--worker-threads", "1"] + base
    train = ["--optimizer", "sgd", "--lr", "0.01", "--momentum", "0.9"]
    runs = {
        "fedavg": sim + ["--strategy", "fedavg", "--model", "cnn", "--fedavg.rounds", str(E),
                         "--fedavg.local_epochs", "1", "--fedavg.batch_size", "32"] +
                        [f"--fedavg.{o[2:]}" if o.startswith("--") else o for o in train],
        "split": sim + ["--strategy", "split", "--model", "cnn:cut=pool1", "--split.epochs", str(E),
                        "--split.batch_size", "32"] + [f"--split.{o[2:]}" if o.startswith("--") else o for o in train],
        "split-u": sim + ["--strategy", "split", "--model", "cnn:cut=pool1", "--split.epochs", str(E),
                          "--split.batch_size", "32", "--split.labels", "worker", "--private-labels"] +
                         [f"--split.{o[2:]}" if o.startswith("--") else o for o in train],
        "train": [a.fedra, "train", "--threads", "2", "--model", "cnn", "--epochs", str(E), "--batch-size", "32"] +
                 [o for o in base if o not in ("--partition", "iid")] + train,
    }
    N = CNN_WEIGHTS * 4
    forms = {  # bytes per epoch, all workers, up + down
        "fedavg": (2 * N * K, "2NK"),
        "split": (2 * p * CUT_FLOATS * 4 + 2 * BOTTOM_WEIGHTS * 4 * K, "2pq + 2(eta N)K"),
        # U-shaped: the cut both ways, plus the middle's output (relu3, 512 floats per example)
        # down and its gradient up; the head (fc2, 5,130 weights) is passed on with the bottom.
        "split-u": (2 * p * (CUT_FLOATS + 512) * 4 + 2 * (BOTTOM_WEIGHTS + 5130) * 4 * K, "2p(q+q') + 2(eta N)K"),
    }
    out_root = a.out or tempfile.mkdtemp(prefix="fedavg-vs-split-")
    rows = []
    for name, cmd in runs.items():
        print(f"running {name} ...", flush=True)
        lines, wall = run(cmd, os.path.join(out_root, name))
        last = lines[-1]
        per_epoch = (last["bytes_up"] + last["bytes_down"]) / E
        if len(lines) >= 2:  # the steady state: the last epoch alone, handshakes excluded
            per_epoch = last["bytes_up"] + last["bytes_down"] - lines[-2]["bytes_up"] - lines[-2]["bytes_down"]
        form = forms.get(name)
        rows.append({"run": name, "test_accuracy": last.get("test_accuracy"), "bytes_per_epoch": per_epoch,
                     "bytes_per_worker_per_epoch": per_epoch / K if name != "train" else 0,
                     "closed_form": form[0] if form else "", "formula": form[1] if form else "",
                     "wall_s": wall})
    with open(os.path.join(out_root, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)
    print(f"\nFashion-MNIST{' (6,000 images)' if a.quick else ''}, CNN, {K} workers IID, {E} epochs, batch 32, "
          f"SGD lr 0.01 momentum 0.9")
    print(f"| run | test accuracy | MB per worker per epoch | closed form (MB) | measured / form | wall s |")
    print(f"|---|---|---|---|---|---|")
    for r in rows:
        acc = f"{r['test_accuracy']:.4f}" if r["test_accuracy"] is not None else "-"
        if r["closed_form"]:
            form = f"{r['closed_form'] / K / 1e6:.2f} ({r['formula']})"
            ratio = f"{r['bytes_per_epoch'] / r['closed_form']:.3f}"
        else:
            form, ratio = "-", "-"
        print(f"| {r['run']} | {acc} | {r['bytes_per_worker_per_epoch'] / 1e6:.2f} | {form} | {ratio} | {r['wall_s']:.1f} |")
    print(f"\nruns and results.csv in {out_root}")


if __name__ == "__main__":
    main()
