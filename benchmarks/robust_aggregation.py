#!/usr/bin/python3
"""Robust aggregation against Byzantine workers: accuracy of each rule, clean and attacked.

  /usr/bin/python3 benchmarks/robust_aggregation.py [--rounds 10] [--quick] [--out DIR]

The default experiment (experiments/fedavg-fmnist.cfg: Fashion-MNIST, 10 workers, IID, MLP
784-200-200-10, 2 local epochs of SGD lr 0.02 momentum 0.9, seed 1), with workers 3 and 7
Byzantine: each sends global - 10 (w - global), its update flipped and scaled ten times
(--fedavg.testing.byzantine worker-3,worker-7 --fedavg.testing.attack sign_flip
--fedavg.testing.attack_scale 10). Rules: mean (FedAvg), median, trimmed_mean (beta 0.2),
krum and multi_krum (f = 2). Prints the final test accuracy of each, and of the clean mean run
for reference. --quick: 3 rounds on 12,000 images.
"""
import os

from benchlib import experiment, simulate_default

ATTACK = ["--fedavg.testing.byzantine", "worker-3,worker-7", "--fedavg.testing.attack", "sign_flip",
          "--fedavg.testing.attack_scale", "10"]
RUNS = [
    ("mean, clean", []),
    ("mean", ATTACK),
    ("median", ATTACK + ["--fedavg.aggregate", "median"]),
    ("trimmed_mean (beta 0.2)", ATTACK + ["--fedavg.aggregate", "trimmed_mean", "--fedavg.trim_beta", "0.2"]),
    ("krum (f 2)", ATTACK + ["--fedavg.aggregate", "krum", "--fedavg.krum_f", "2"]),
    ("multi_krum (f 2)", ATTACK + ["--fedavg.aggregate", "multi_krum", "--fedavg.krum_f", "2"]),
]


def main():
    a, rounds, out = experiment(10, "robust-")
    print(f"Fashion-MNIST, 10 workers (IID), 2 Byzantine (sign flip x10), {rounds} rounds")
    print("| rule | final acc | best acc | vs clean (points) | rounds ok | aggregate s/round | wall s |")
    print("|---|---|---|---|---|---|---|")
    clean = None
    for name, extra in RUNS:
        d = os.path.join(out, name.split()[0] + ("-clean" if "clean" in name else ""))
        s, lines, wall = simulate_default(a.fedra, d, rounds, a.quick, extra, may_fail=bool(extra))
        ok = [line for line in lines if line["status"] == "ok"]  # a diverged model fails its later rounds
        agg = sum(line["average_s"] for line in ok) / max(len(ok), 1)
        acc = s["final"]["test_accuracy"]
        if clean is None:
            clean = acc
        print(f"| {name} | {acc:.4f} | {s['best_test_accuracy']:.4f} | {100 * (acc - clean):+.1f} | "
              f"{len(ok)}/{len(lines)} | {agg:.3f} | {wall:.1f} |", flush=True)


if __name__ == "__main__":
    main()
