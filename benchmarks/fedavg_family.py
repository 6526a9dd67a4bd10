#!/usr/bin/python3
"""The FedAvg family on a pathological non-IID split, at equal rounds: one comparison table.

  /usr/bin/python3 benchmarks/fedavg_family.py [--rounds 20] [--quick] [--out DIR]

Each method is `fedra simulate` with the default experiment (experiments/fedavg-fmnist.cfg:
Fashion-MNIST, 10 workers, MLP 784-200-200-10, local SGD lr 0.02 momentum 0.9, batch 32, seed 1)
on `--partition shards:k=2` (McMahan et al.: two classes per worker) with 1 local epoch per
round, changing only what the method changes:
  fedavg       the example-weighted mean is the next model
  fedavgm      --fedavg.server_opt momentum (server lr 1, momentum 0.9; Hsu et al. 2019)
  fedadagrad   --fedavg.server_opt adagrad  (server lr 0.01, beta1 0.9, tau 1e-3; Reddi et al. 2021)
  fedadam      --fedavg.server_opt adam     (server lr 0.01, beta1 0.9, beta2 0.99, tau 1e-3)
  fedyogi      --fedavg.server_opt yogi     (the same settings)
  fedprox      --fedavg.proximal_mu 0.1     (Li et al. 2020)
  fedavg-sgd   plain local SGD: --fedavg.momentum 0 --fedavg.lr 0.05 (SCAFFOLD's baseline)
  scaffold     the same with --fedavg.scaffold true (Karimireddy et al. 2020; option II needs plain SGD)
Prints, per method: the final and best test accuracy (central test set, 10,000 images), bytes on
the wire over the run (up + down) and wall time. --quick runs 3 rounds on 12,000 images (a smoke
run). --out keeps each run's files and writes results.csv. --methods a,b runs only those (fedavg,
the baseline, always runs first).
"""
import csv
import os

from benchlib import experiment, simulate_default

METHODS = [
    ("fedavg", []),
    ("fedavgm", ["--fedavg.server_opt", "momentum"]),
    ("fedadagrad", ["--fedavg.server_opt", "adagrad"]),
    ("fedadam", ["--fedavg.server_opt", "adam"]),
    ("fedyogi", ["--fedavg.server_opt", "yogi"]),
    ("fedprox", ["--fedavg.proximal_mu", "0.1"]),
    ("fedavg-sgd", ["--fedavg.momentum", "0", "--fedavg.lr", "0.05"]),
    ("scaffold", ["--fedavg.momentum", "0", "--fedavg.lr", "0.05", "--fedavg.scaffold", "true"]),
]


def main():
    a, rounds, out = experiment(20, "fedavg-family-", methods=(
        "", "comma-separated methods to run besides fedavg; default: all"))
    chosen = {"fedavg"} | set(filter(None, a.methods.split(",")))
    rows = []
    print(f"Fashion-MNIST, shards:k=2 over 10 workers, {rounds} rounds of 1 local epoch")
    print("| method | final acc | best acc | MB on the wire | wall s |")
    print("|---|---|---|---|---|")
    for name, extra in METHODS:
        if a.methods and name not in chosen:
            continue
        s, _, wall = simulate_default(a.fedra, os.path.join(out, name), rounds, a.quick,
                                      ["--partition", "shards:k=2", "--fedavg.local_epochs", "1"] + extra)
        r = {"final_accuracy": s["final"]["test_accuracy"], "best_accuracy": s["best_test_accuracy"],
             "bytes": s["bytes_up"] + s["bytes_down"], "wall_s": wall}
        rows.append(dict(method=name, **r))
        print(f"| {name} | {r['final_accuracy']:.4f} | {r['best_accuracy']:.4f} | {r['bytes'] / 1e6:.1f} | "
              f"{r['wall_s']:.1f} |", flush=True)
    with open(os.path.join(out, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    base = rows[0]["final_accuracy"]
    better = [r["method"] for r in rows[1:] if r["final_accuracy"] > base]
    print(f"beat fedavg's final accuracy ({base:.4f}): {', '.join(better) if better else 'none'}")


if __name__ == "__main__":
    main()
