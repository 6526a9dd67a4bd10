#!/usr/bin/python3
"""What TLS costs: the same simulations with and without `fedra simulate --tls`, side by side.

  /usr/bin/python3 benchmarks/tls_overhead.py [--repeats 3] [--fedra build/fedra]

Runs, alternating plain and TLS so that drift on the machine hits both alike:
  gradsum  2 workers, MLP 784-200-200-10, 10,000 images, 1 epoch: a message each way per step
           (~0.7 MB): the most traffic per second of computation Fedra has;
  fedavg   2 workers, CNN, 10,000 images, 2 rounds of one local epoch: two model transfers
           per round, much computation between them.
Prints the median fit time (gradsum: ms per step; fedavg: seconds per round), bytes per
worker, accuracy, and the TLS/plain ratio. TLS changes no byte of the frames (bytes are the
same in both columns) and no result (the accuracy is the same).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

RUNS = {
    "gradsum": ["--strategy", "gradsum", "--model", "mlp:784-200-200-10", "--dataset", "fmnist:limit=10000",
                "--gradsum.epochs", "1", "--gradsum.lr", "0.05"],
    "fedavg": ["--strategy", "fedavg", "--model", "cnn", "--dataset", "fmnist:limit=10000",
               "--fedavg.rounds", "2", "--fedavg.local_epochs", "1"],
}


def run(fedra, name, tls, out):
    cmd = [fedra, "simulate", "--workers", "2", "--test-data", "fmnist:test_limit=2000", "--log-level", "warn",
           "--out", out] + RUNS[name] + (["--tls"] if tls else [])
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}")
    lines = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    last = lines[-1]
    if name == "gradsum":
        fit = statistics.mean(l["step_ms"] for l in lines)
    else:
        fit = statistics.mean(l["fit_s"] for l in lines)
    per_worker = sum(v for k, v in last.items() if k.startswith("bytes_up.")) / 2
    return fit, per_worker, last["test_accuracy"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--fedra", default=os.path.join(ROOT, "build", "fedra"))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in RUNS:
            results = {False: [], True: []}
            for r in range(args.repeats):
                for tls in (False, True):
                    out = os.path.join(tmp, f"{name}-{r}-{'tls' if tls else 'plain'}")
                    results[tls].append(run(args.fedra, name, tls, out))
                    print(f"  {name} {'tls  ' if tls else 'plain'} #{r + 1}: fit {results[tls][-1][0]:.3f}",
                          file=sys.stderr, flush=True)
            med = {t: statistics.median(x[0] for x in results[t]) for t in results}
            rows.append((name, med[False], med[True], results[False][0][1], results[True][0][1],
                         results[False][0][2], results[True][0][2]))
    unit = {"gradsum": "ms/step", "fedavg": "s/round"}
    print(f"| run | plain | TLS | TLS/plain | MB up per worker (plain / TLS) | test acc (plain / TLS) |")
    print(f"|---|---|---|---|---|---|")
    for name, p, t, bp, bt, ap_, at in rows:
        print(f"| {name} | {p:.3f} {unit[name]} | {t:.3f} {unit[name]} | {t / p:.2f}x | "
              f"{bp / 1e6:.1f} / {bt / 1e6:.1f} | {ap_:.4f} / {at:.4f} |")


if __name__ == "__main__":
    main()
