#!/usr/bin/python3
"""Time to accuracy on a slow, uneven fleet: synchronous FedAvg, FedAvg with a round deadline,
FedAsync and FedBuff on the same simulated devices, side by side in one run.

  /usr/bin/python3 benchmarks/async_fleet.py [--fedra build/fedra] [--out DIR] [--quick]
                                             [--plots docs/img] [--partition dirichlet:alpha=0.3]

Every run: 100 clients (Fashion-MNIST, iid, 600 images each) in 2 worker processes, MLP 784-200-10,
one local epoch at batch 32 (19 steps), the fleet lognormal:sigma=1.8 (compute slowdown
LogNormal(0, 1.8): the median device is the reference at 0.05 s per step, the slowest tenth at
least 10x slower), on the virtual clock (simulated seconds; a run is a function of its seed).
  fedavg            10 rounds, 10 clients sampled per round; a round lasts as its slowest update
  fedavg-deadline   the same with round_deadline 2 s (about 2x the median update): later updates
                    are dropped, their work wasted
  fedasync          each update mixed in as it arrives (mixing 0.6, polynomial staleness a=0.5),
                    10 clients training at a time
  fedbuff           K = 10 updates per server step, polynomial staleness a=0.5, server_lr 1,
                    20 clients training at a time
Prints, per run: the simulated seconds to reach the accuracy FedAvg has after its 10 rounds (and
the speed-up against the time FedAvg first reaches it), the accuracy at FedAvg's total device work (device seconds, lost
and dropped work included), the final accuracy, and the wall time of the run. Writes per run
CSV (virtual_time_s, device_s, test_accuracy) and, with gnuplot, time-to-accuracy and
accuracy-vs-device-work plots (SVG) into --plots.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FLEET = "lognormal:sigma=1.8"
COMMON = ["--workers", "2", "--clients", "100", "--model", "mlp:784-200-10", "--fleet", FLEET, "--clock", "virtual",
          "--log-level", "warn", "--seed", "1"]
RUNS = {
    "fedavg": ["--strategy", "fedavg", "--fedavg.rounds", "10", "--fedavg.fraction", "0.1"],
    "fedavg-deadline": ["--strategy", "fedavg", "--fedavg.rounds", "10", "--fedavg.fraction", "0.1",
                        "--fedavg.round_deadline", "2", "--fedavg.min_results", "1"],
    "fedasync": ["--strategy", "fedasync", "--fedasync.updates", "600", "--fedasync.concurrency", "10",
                 "--fedasync.eval_every", "10"],
    "fedbuff": ["--strategy", "fedbuff", "--fedbuff.updates", "60", "--fedbuff.buffer", "10",
                "--fedbuff.concurrency", "20", "--fedbuff.eval_every", "1"],
}


def run(fedra, name, out, quick, partition):
    args = list(RUNS[name]) + ["--partition", partition]
    if quick:
        for opt, value in (("--fedavg.rounds", "4"), ("--fedasync.updates", "200"), ("--fedbuff.updates", "20")):
            if opt in args:
                args[args.index(opt) + 1] = value
    cmd = [fedra, "simulate"] + COMMON + args + ["--out", out]
    t0 = time.time()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.time() - t0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}")
    lines = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    points = [(l["virtual_time_s"], l["device_s"], l["test_accuracy"]) for l in lines if "test_accuracy" in l]
    return {"points": points, "wall": wall, "lines": lines, "cmd": cmd}


def first_reaching(points, target):
    for t, work, acc in points:
        if acc >= target:
            return t
    return None


def at_work(points, work):
    best = None
    for t, w, acc in points:
        if w <= work * (1 + 1e-9):
            best = acc
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fedra", default=os.path.join(ROOT, "build", "fedra"))
    ap.add_argument("--out", help="directory for the runs (default: a temporary one)")
    ap.add_argument("--plots", help="write the CSV files and SVG plots here (e.g. docs/img)")
    ap.add_argument("--quick", action="store_true", help="shorter runs (a smoke test, not the figures)")
    ap.add_argument("--partition", default="iid", help="how the data is split over the clients (iid, dirichlet:alpha=A)")
    a = ap.parse_args()
    out = a.out or tempfile.mkdtemp(prefix="fedra-async-")
    results = {}
    for name in RUNS:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results[name] = run(a.fedra, name, os.path.join(out, name), a.quick, a.partition)
    base = results["fedavg"]["points"]
    target = base[-1][2]
    base_time = first_reaching(base, target)  # on non-IID data FedAvg may pass it before its last round
    base_work = base[-1][1]
    print(f"fleet {FLEET}, 100 clients, {a.partition} data, virtual clock; target: FedAvg's accuracy after its last "
          f"round, {target:.4f}, first reached at {base_time:.1f} simulated s; FedAvg's device work {base_work:.1f} s")
    print(f"{'run':16} {'s to target':>12} {'speed-up':>9} {'acc @ fedavg work':>18} {'final acc':>10} "
          f"{'final sim s':>12} {'device s':>9} {'wall s':>7}")
    summary = {}
    for name, r in results.items():
        pts = r["points"]
        t = first_reaching(pts, target)
        speed = base_time / t if t else None
        acc_w = at_work(pts, base_work)
        summary[name] = {"time_to_target": t, "speedup": speed, "accuracy_at_fedavg_work": acc_w,
                         "final_accuracy": pts[-1][2], "final_time": pts[-1][0], "device_s": pts[-1][1],
                         "wall_s": r["wall"]}
        fmt = lambda v, f: format(v, f) if v is not None else "not reached"
        print(f"{name:16} {fmt(t, '12.1f'):>12} {fmt(speed, '8.2f') + 'x' if speed else 'n/a':>9} "
              f"{fmt(acc_w, '18.4f'):>18} {pts[-1][2]:10.4f} {pts[-1][0]:12.1f} {pts[-1][1]:9.1f} {r['wall']:7.1f}")
    fb = summary["fedbuff"]
    print(f"fedbuff vs fedavg: {fb['speedup']:.2f}x sooner to {target:.4f} in simulated time" if fb["speedup"]
          else "fedbuff did not reach the target")
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump({"target": target, "fedavg_device_s": base_work, "runs": summary}, f, indent=2)
    if a.plots:
        plot(results, a.plots, target)
    print(f"runs in {out}", file=sys.stderr)


def plot(results, where, target):
    os.makedirs(where, exist_ok=True)
    for name, r in results.items():
        with open(os.path.join(where, f"async-{name}.csv"), "w") as f:
            f.write("virtual_time_s,device_s,test_accuracy\n")
            for t, w, acc in r["points"]:
                f.write(f"{t:.4f},{w:.4f},{acc:.4f}\n")
    if not shutil.which("gnuplot"):
        print("plots: gnuplot is not installed (Debian: gnuplot-nox); CSV files written", file=sys.stderr)
        return
    series = lambda col: ", ".join(
        f"'async-{n}.csv' using {col}:3 with linespoints pt 7 ps 0.4 title '{n}'" for n in results)
    gp = f"""set datafile separator ','
set key autotitle columnhead
set terminal svg size 720,420 font 'DejaVu Sans,11' background '#ffffff'
set ylabel 'test accuracy'
set yrange [0.6:0.9]
set grid
set key bottom right
set arrow from graph 0, first {target} to graph 1, first {target} nohead dt 2 lc rgb '#888888'
set output 'async-time_to_accuracy.svg'
set title 'Time to accuracy, 100 clients, fleet {FLEET} (simulated clock)'
set xlabel 'simulated seconds'
set xrange [0:*]
plot {series(1)}
set output 'async-device_work.svg'
set title 'Accuracy against device work (compute and transfer seconds, wasted work included)'
set xlabel 'device seconds'
plot {series(2)}
"""
    with open(os.path.join(where, "async-plots.gp"), "w") as f:
        f.write(gp)
    p = subprocess.run(["gnuplot", "async-plots.gp"], cwd=where, capture_output=True, text=True)
    if p.returncode != 0:
        print(f"plots: gnuplot failed: {p.stderr}", file=sys.stderr)


if __name__ == "__main__":
    main()
