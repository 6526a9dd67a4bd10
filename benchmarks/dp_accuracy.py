#!/usr/bin/python3
"""Differential privacy on Fashion-MNIST: accuracy against epsilon for three noise levels.

  /usr/bin/python3 benchmarks/dp_accuracy.py [--rounds 30] [--quick] [--out DIR]

DP-FedAvg (docs/privacy.md) needs many workers per round: the noise on the mean is z C / m per
coordinate. So this runs 200 clients (2 worker processes hosting 100 virtual clients each, IID
parts of the 60,000 training images, 300 each), a small model (mlp:784-64-10, 50,890 parameters),
and samples m = 100 per round (fraction 0.5, so the accountant's q = 0.5); 1 local epoch of SGD
(lr 0.05, momentum 0.9, batch 32). Runs, everything else equal:
  no DP          plain FedAvg (uniform sampling, example-weighted mean)
  clip only      --fedavg.dp server --fedavg.dp_noise 0 (clipping to C = 1, no noise: epsilon infinite)
  z = 0.5, 1, 2, 4  --fedavg.dp server --fedavg.dp_noise z --fedavg.dp_clip 1
  z = 1, adaptive C  the same with --fedavg.dp_adaptive true from C = 0.1 (target quantile 0.5)
  z = 1, client-side --fedavg.dp client: each worker clips and adds its share of the noise
Prints each run's final test accuracy, its epsilon at delta = 1e-5 after the last round and the
final clip norm C.
--quick: 3 rounds on 12,000 images. --out keeps each run's files.
"""
import math
import os

from benchlib import experiment, simulate_default

COMMON = ["--clients", "200", "--workers", "2", "--model", "mlp:784-64-10", "--fedavg.fraction", "0.5",
          "--fedavg.local_epochs", "1", "--fedavg.lr", "0.05", "--fedavg.eval_every", "5"]
RUNS = [
    ("no DP", []),
    ("clip only (C = 1)", ["--fedavg.dp", "server", "--fedavg.dp_noise", "0"]),
    ("z = 0.5", ["--fedavg.dp", "server", "--fedavg.dp_noise", "0.5"]),
    ("z = 1", ["--fedavg.dp", "server", "--fedavg.dp_noise", "1"]),
    ("z = 2", ["--fedavg.dp", "server", "--fedavg.dp_noise", "2"]),
    ("z = 4", ["--fedavg.dp", "server", "--fedavg.dp_noise", "4"]),
    ("z = 1, adaptive C", ["--fedavg.dp", "server", "--fedavg.dp_noise", "1", "--fedavg.dp_adaptive", "true",
                           "--fedavg.dp_clip", "0.1"]),
    ("z = 1, client-side", ["--fedavg.dp", "client", "--fedavg.dp_noise", "1"]),
]


def main():
    a, rounds, out = experiment(30, "dp-")
    print(f"Fashion-MNIST, 200 clients, 100 sampled per round (q = 0.5), mlp:784-64-10, {rounds} rounds")
    print("| run | final acc | epsilon (delta 1e-5) | final C | wall s |")
    print("|---|---|---|---|---|")
    for name, extra in RUNS:
        d = os.path.join(out, "".join(c if c.isalnum() else "-" for c in name))
        seed = ["--fedavg.dp_seed", "1"] if extra else []  # reproducible noise: an experiment, not a deployment
        s, _, wall = simulate_default(a.fedra, d, rounds, a.quick, COMMON + seed + extra)
        eps = s.get("dp_epsilon")
        shown = "-" if not extra else ("inf" if eps is None or math.isinf(eps) else f"{eps:.2f}")
        clip = f"{s['final']['dp_clip']:.3g}" if extra else "-"
        print(f"| {name} | {s['final']['test_accuracy']:.4f} | {shown} | {clip} | {wall:.1f} |", flush=True)


if __name__ == "__main__":
    main()
