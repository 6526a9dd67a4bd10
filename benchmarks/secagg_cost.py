#!/usr/bin/python3
"""What secure aggregation costs: the same FedAvg rounds with and without --fedavg.secagg, side by
side in one run, alternating so that drift on the machine hits both alike.

  /usr/bin/python3 benchmarks/secagg_cost.py [--repeats 3] [--fedra build/fedra] [--quick]

Cases (issue: at most 2x the plain round for 10 workers and a 1M-float model; under 3x for 100
virtual clients with k = 8 neighbours):
  10 workers     10 worker processes, MLP 784-1024-200-10 (1,010,850 floats), one local epoch on
                 300 images each; every pair masks (SecAgg), t = 5
  100 clients    100 virtual clients in 2 processes, the same model, 60 images each,
                 secagg_neighbours 8 (SecAgg+), t = 5
Prints per case the median round time (fit_s: sampling to the aggregate, training included), the
coordinator thread's CPU time in the round (fit_cpu_s), the most CPU one worker spent on the
protocol (secagg_worker_cpu_s_max), bytes up per client, the accuracy of both, and the ratio.
Rounds after the first are measured (the first pays for connections and page faults).
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
MODEL = "mlp:784-1024-200-10"

CASES = {
    "10 workers": ["--workers", "10", "--dataset", "fmnist:limit=3000", "--fedavg.rounds", "4"],
    "100 clients": ["--workers", "2", "--clients", "100", "--dataset", "fmnist:limit=6000", "--fedavg.rounds", "4",
                    "--fedavg.secagg_neighbours", "8"],
}


def run(fedra, case, secure, out, quick):
    args = list(CASES[case])
    if quick:
        args[args.index("--fedavg.rounds") + 1] = "2"
    if not secure:  # the plain run takes no secagg option
        for opt in ("--fedavg.secagg_neighbours",):
            if opt in args:
                i = args.index(opt)
                del args[i:i + 2]
    cmd = [fedra, "simulate", "--model", MODEL, "--test-data", "fmnist:test_limit=2000", "--log-level", "warn",
           "--fedavg.local_epochs", "1", "--fedavg.momentum", "0", "--fedavg.secagg", "true" if secure else "false",
           "--out", out] + args
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}")
    lines = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    measured = lines[1:] if len(lines) > 1 else lines
    clients = measured[0]["workers_asked"]
    return {
        "fit_s": statistics.median(l["fit_s"] for l in measured),
        "cpu_s": statistics.median(l["fit_cpu_s"] for l in measured),
        "worker_cpu_s": statistics.median(l.get("secagg_worker_cpu_s_max", 0) for l in measured),
        # bytes_up is cumulative: a round's is the difference between consecutive lines.
        "up_mb": (lines[-1]["bytes_up"] - lines[0]["bytes_up"]) / (len(lines) - 1) / clients / 1e6,
        "acc": lines[-1]["test_accuracy"],
        "dropped": sum(l.get("secagg_dropped", 0) for l in lines),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--fedra", default=os.path.join(ROOT, "build", "fedra"))
    ap.add_argument("--quick", action="store_true", help="2 rounds, 1 repeat: a smoke run")
    args = ap.parse_args()
    repeats = 1 if args.quick else args.repeats
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            results = {False: [], True: []}
            for r in range(repeats):
                for secure in (False, True):
                    out = os.path.join(tmp, f"{case.replace(' ', '-')}-{r}-{'secagg' if secure else 'plain'}")
                    results[secure].append(run(args.fedra, case, secure, out, args.quick))
                    x = results[secure][-1]
                    print(f"  {case} {'secagg' if secure else 'plain '} #{r + 1}: round {x['fit_s']:.3f} s, "
                          f"coordinator CPU {x['cpu_s']:.3f} s", file=sys.stderr, flush=True)
            med = {s: {k: statistics.median(x[k] for x in results[s]) for k in results[s][0]} for s in results}
            rows.append((case, med[False], med[True]))
    print("| case | round plain | round secagg | ratio | coordinator CPU plain / secagg | worker protocol CPU "
          "(max) | MB up per client plain / secagg | test acc plain / secagg |")
    print("|---|---|---|---|---|---|---|---|")
    for case, p, s in rows:
        print(f"| {case} | {p['fit_s']:.3f} s | {s['fit_s']:.3f} s | {s['fit_s'] / p['fit_s']:.2f}x | "
              f"{p['cpu_s']:.3f} / {s['cpu_s']:.3f} s | {s['worker_cpu_s']:.3f} s | {p['up_mb']:.2f} / {s['up_mb']:.2f} | "
              f"{p['acc']:.4f} / {s['acc']:.4f} |")


if __name__ == "__main__":
    main()
