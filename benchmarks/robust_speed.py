#!/usr/bin/python3
"""Robust aggregators against numpy, side by side in one run: K updates of N float32 each.

  /usr/bin/python3 benchmarks/robust_speed.py [--n 10000000] [--k 10] [--quick]

Fedra: build/benchmarks/robust_bench (core/federated/robust_aggregation.h: coordinate_median, trimmed_mean
with beta 0.1), on all cores as a coordinator runs by default (--threads 1: one). numpy: np.median(stack, axis=0) and
the sorted trimmed mean (np.sort(stack, axis=0)[k:K-k].mean(axis=0)) on the same shape, one
thread (numpy's median and sort do not use threads). Best of 3 each. Ratio = numpy / Fedra.
"""
import json
import os
import subprocess
import sys
import time

import numpy as np

from benchlib import ROOT, arguments


def best_ms(f, repeats):
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        best = min(best, (time.perf_counter() - t0) * 1e3)
    return best


def main():
    ap = arguments(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0,
                    help="Fedra's LibTorch threads; 0 = all cores, a coordinator's default")
    a = ap.parse_args()
    n = 1_000_000 if a.quick else a.n
    binary = os.path.join(os.path.dirname(a.fedra), "benchmarks", "robust_bench")
    r = subprocess.run([binary, str(n), str(a.k), "3", str(a.threads)], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit("robust_bench failed:\n" + r.stderr)
    fedra = json.loads(r.stdout.strip().splitlines()[-1])
    stack = np.random.default_rng(1).random((a.k, n), dtype=np.float32)
    cut = int(0.1 * a.k)
    numpy_median = best_ms(lambda: np.median(stack, axis=0), 3)
    numpy_trimmed = best_ms(lambda: np.sort(stack, axis=0)[cut:a.k - cut].mean(axis=0), 3)
    print(f"{a.k} updates of {n:,} float32 ({a.k * n * 4 / 1e6:.0f} MB), Fedra on {fedra['threads']} thread(s)")
    print("| rule | Fedra ms | numpy ms | ratio (numpy / Fedra) |")
    print("|---|---|---|---|")
    for name, f, p in [("median", fedra["median_ms"], numpy_median),
                       ("trimmed_mean (beta 0.1)", fedra["trimmed_mean_ms"], numpy_trimmed)]:
        print(f"| {name} | {f:.1f} | {p:.1f} | {p / f:.2f}x |")


if __name__ == "__main__":
    main()
