#!/usr/bin/python3
"""The benchmark suite's report (benchmarks/suite.py runs the suite): its plots (gnuplot), the
report's tables and closed forms, and its files (suite.json, results.csv, curves.csv)."""

import csv
import datetime
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys

# McMahan et al.'s CNN and its cut after pool1 (core/model/model.h; counts tested in tests/unit/model_test.cc)
CNN_WEIGHTS = 1_663_370
BOTTOM_WEIGHTS = 832  # conv1: 32 x 1 x 5 x 5 + 32
CUT_FLOATS = 32 * 14 * 14  # pool1's output per example
# In bytes (float32), as the closed forms use them: N (the model), q (the cut per example), ηN.
N_BYTES, Q_BYTES, ETA_N_BYTES = CNN_WEIGHTS * 4, CUT_FLOATS * 4, BOTTOM_WEIGHTS * 4

COLOURS = {"fedavg": "#1b9e77", "gradsum": "#d95f02", "split": "#7570b3", "split-u": "#e7298a",
           "psl": "#66a61e", "train": "#000000"}
EXTRA_COLOURS = ["#e6ab02", "#a6761d", "#1f78b4", "#b2df8a", "#fb9a99"]


def log(msg):
    print(msg, flush=True)


def fail(msg):
    sys.exit(f"suite: {msg}")


def colour_of(strategy, order):
    if strategy in COLOURS:
        return COLOURS[strategy]
    extras = [s for s in order if s not in COLOURS]
    return EXTRA_COLOURS[extras.index(strategy) % len(EXTRA_COLOURS)]


def plot(suite):
    a = suite.a
    if not shutil.which("gnuplot"):
        log("plots: gnuplot is not installed (Debian: gnuplot-nox); the CSV files are written, the plots are not")
        return []
    plots_dir = os.path.join(a.out, "plots")
    data_dir = os.path.join(plots_dir, "data")
    os.makedirs(data_dir, exist_ok=True)
    partitions = [p for p in a.partitions]
    strategies = [s for s in a.strategies]
    # one data file per (strategy, partition): epoch, accuracy, seconds, MB
    series = {}
    for c in suite.curves:
        series.setdefault((c["strategy"], c["partition"]), []).append(c)
    for (s, p), pts in series.items():
        with open(os.path.join(data_dir, f"{s}__{safe(p)}.dat"), "w") as f:
            f.write("# epoch test_accuracy elapsed_s bytes\n")
            for c in pts:
                f.write(f"{c['epoch']} {c['test_accuracy']} {c['elapsed_s']} {max(c['bytes'], 1)}\n")

    gp = [f"# Redraws the suite's plots: cd {plots_dir} && gnuplot plots.gp",
          "set encoding utf8", "set grid lc rgb '#dddddd'", "set yrange [0:1]", "set ytics 0.1",
          "set style data linespoints"]
    figures = [
        ("accuracy_vs_round", 1, "epochs of training data (one round = one epoch in this suite)", False,
         "Test accuracy after each round"),
        ("accuracy_vs_bytes", 4, "bytes on the wire so far, all workers, up + down (log scale)", True,
         "Test accuracy against bytes on the wire"),
        ("accuracy_vs_time", 3, "wall time since the coordinator started (s)", False,
         "Test accuracy against wall time"),
    ]
    outputs = []
    n = len(partitions)
    for name, col, xlabel, logx, title in figures:
        for term, ext in (("pngcairo size {w},{h} font 'DejaVu Sans,10'", "png"),
                          ("svg size {w},{h} dynamic font 'DejaVu Sans,10'", "svg")):
            width = 480 * n + 200  # the legend takes the last 200 pixels
            gp.append(f"set terminal {term.format(w=width, h=460)}")
            gp.append(f"set output '{name}.{ext}'")
            gp.append(f"set multiplot layout 1,{n} title '{title} ({a.profile_label})' font ',12' "
                      f"margins {60 / width:.3f},{1 - 200 / width:.3f},0.16,0.86 spacing {95 / width:.3f}")
            gp.append(f"set logscale x" if logx else "unset logscale x")
            gp.append("set format x '%.0s %cB'" if col == 4 else "set format x '%g'")
            gp.append("set xtics 1" if col == 1 and a.epochs <= 12 else "set xtics auto")
            gp.append(f"set xlabel '{xlabel}'" + (" font ',9'" if len(xlabel) > 50 else ""))
            gp.append("set ylabel 'test accuracy'")
            for i, p in enumerate(partitions):
                gp.append(f"set title '{p}'")
                # One legend for the figure, right of the panels; every panel the same size.
                gp.append(f"set key at screen {1 - 185 / width:.3f}, 0.5 left center vertical Left reverse "
                          f"font ',10' spacing 1.3" if i == 0 else "set key off")
                parts = []
                for s in strategies:
                    key = (s, "" if s == "train" else p)
                    if key not in series:
                        continue
                    if s == "train" and col == 4:
                        continue  # nothing crosses the wire in one process
                    parts.append(f"'data/{s}__{safe(key[1])}.dat' using {col}:2 title '{s}' "
                                 f"lc rgb '{colour_of(s, strategies)}' lw 2 pt 7 ps 0.6"
                                 + (" dt 2" if s == "train" else ""))
                if not parts:
                    gp.append("set label 1 'no runs' at graph 0.5, 0.5 center")
                    gp.append("plot NaN notitle")
                    gp.append("unset label 1")
                else:
                    gp.append("plot " + ", \\\n     ".join(parts))
            gp.append("unset multiplot")
            gp.append("unset output")
            outputs.append(f"{name}.{ext}")

    if suite.crossover:
        p = suite.crossover[0]["p"]
        N, q, eta_n = N_BYTES, Q_BYTES, ETA_N_BYTES

        def k_star(examples, handovers):  # K beyond which split learning sends fewer bytes
            return 2 * examples * q / (2 * N - handovers * eta_n)

        with open(os.path.join(data_dir, "crossover.dat"), "w") as f:
            f.write("# K fedavg_measured_bytes split_measured_bytes\n")
            ks = sorted({r["K"] for r in suite.crossover})
            for K in ks:
                fa = [r["measured_bytes"] for r in suite.crossover if r["K"] == K and r["strategy"] == "fedavg"]
                sp = [r["measured_bytes"] for r in suite.crossover if r["K"] == K and r["strategy"] == "split"]
                f.write(f"{K} {fa[0] if fa else 'NaN'} {sp[0] if sp else 'NaN'}\n")
        whole = 60000 if p < 60000 else None  # also draw the whole of Fashion-MNIST's split line
        kmax = 10 ** math.ceil(math.log10(max(4 * k_star(whole or p, 2), max(ks) * 2)))
        k_here = k_star(p, 2)
        plots_ = [
            f"2*{N}*x title 'FedAvg, closed form 2NK' lc rgb '#1b9e77' lw 1.5 dt 2 with lines",
            f"2*{p}*{q} + 2*{eta_n}*x title 'split, closed form as Fedra relays the bottom: 2pq + 2ηNK' "
            f"lc rgb '#7570b3' lw 1.5 dt 2 with lines",
            f"2*{p}*{q} + {eta_n}*x title sprintf('split, Singh et al. (one hand-over): 2pq + ηNK, crossover K > %.1f', "
            f"{k_star(p, 1)}) lc rgb '#aaaaaa' lw 1 dt 4 with lines",
        ]
        if whole:
            plots_.append(f"2*{whole}*{q} + 2*{eta_n}*x title sprintf('split on all {whole:,} examples, closed form: "
                          f"crossover K > %.0f', {k_star(whole, 2)}) lc rgb '#9e9ac8' lw 1.5 dt 3 with lines")
        plots_ += ["'data/crossover.dat' using 1:2 title 'FedAvg, measured' lc rgb '#1b9e77' pt 7 ps 1.2 with points",
                   "'data/crossover.dat' using 1:3 title 'split, measured' lc rgb '#7570b3' pt 5 ps 1.2 with points"]
        for term, ext in (("pngcairo size 900,640 font 'DejaVu Sans,10'", "png"),
                          ("svg size 900,640 dynamic font 'DejaVu Sans,10'", "svg")):
            gp += [f"set terminal {term}", f"set output 'crossover.{ext}'",
                   "set autoscale y", "set ytics auto", "set xtics auto", "set logscale xy", f"set xrange [1:{kmax}]",
                   "set format y '%.0s %cB'", "set format x '%g'",
                   f'set title "Bytes per epoch: split learning vs FedAvg, measured and closed forms\\n'
                   f'McMahan CNN, N = {CNN_WEIGHTS:,} weights; p = {p:,} examples\\n'
                   f'cut after pool1: q = {CUT_FLOATS:,} floats per example, ηN = {BOTTOM_WEIGHTS} weights below the cut" '
                   f'font ",11"',
                   "set xlabel 'workers K (log scale)'",
                   "set ylabel 'bytes per epoch, all workers, up + down (log scale)'",
                   "set key default", "set key inside top left Left reverse font ',9' spacing 1.2",
                   "unset arrow", "unset label",
                   f"set arrow 1 from {k_here},graph 0 to {k_here},graph 1 nohead dt 3 lc rgb '#7570b3'",
                   f"set label 1 sprintf('measured setting: split sends less for K > %.1f', {k_here}) "
                   + (f"at {k_here / 1.1},graph 0.05 right" if k_here > kmax ** 0.6 else f"at {k_here * 1.1},graph 0.05")
                   + " font ',9' tc rgb '#7570b3'",
                   "set samples 400",
                   "plot " + ", \\\n     ".join(plots_),
                   "unset output", "unset arrow", "unset label"]
            outputs.append(f"crossover.{ext}")
    with open(os.path.join(plots_dir, "plots.gp"), "w") as f:
        f.write("\n".join(gp) + "\n")
    r = subprocess.run(["gnuplot", "plots.gp"], cwd=plots_dir, capture_output=True, text=True)
    if r.returncode != 0:
        log(f"plots: gnuplot failed (the CSV files are fine):\n{r.stderr.strip()}")
        return []
    return outputs


def safe(text):
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-") or "all"


# ---- the report -------------------------------------------------------------------------------
def machine():
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = f", {int(line.split()[1]) / 1024 / 1024:.0f} GiB"
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores{mem}, {platform.system()} {platform.release()}"


def fmt_mb(b):
    return f"{b / 1e6:,.1f}" if b else "0"


def report(suite, plots, started, wall):
    a = suite.a
    version = subprocess.run([a.fedra, "version"], capture_output=True, text=True).stdout.strip()
    commit = getattr(a, "commit", "unknown")  # as the suite started
    L = [f"# Fedra benchmark suite: {a.profile_label}", "",
         f"- Command: `{a.command_line}`",
         f"- Started {started:%Y-%m-%d %H:%M}, took {wall / 60:.1f} min; {version.splitlines()[0] if version else 'fedra'}, "
         f"commit {commit}",
         f"- Machine: {machine()}",
         f"- Data: `{a.dataset}`, {a.workers} workers, seed {a.seed}, {a.epochs} epochs of data per run; "
         f"model `{a.model}` (split: cut after {a.cut}; psl: PSNet); SGD lr {a.lr} momentum {a.momentum}, "
         f"batch {a.batch_size} (psl: Adam 0.001, {max(1, 100 // a.workers)} per worker per step); every process "
         f"one LibTorch thread (train: 2)",
         f"- Time to target: seconds from the coordinator's start to the first evaluation at or above "
         f"{a.target:.2f} test accuracy (`-`: not reached)",
         "- Bytes: Fedra frame bytes per worker over the whole run (handshakes included), the mean over "
         "workers; peak memory: the coordinator process's peak RSS", ""]
    for p in a.partitions:
        rows = [r for r in suite.rows if r["partition"] == p or (r["strategy"] == "train" and p == a.partitions[0])]
        if not rows:
            continue
        L += [f"## Partition `{p}`", "",
              "| strategy | model | final acc | best acc | time to target (s) | MB up / worker | MB down / worker "
              "| peak coordinator RSS (MB) | wall (s) | status |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            acc = f"{r['final_accuracy']:.4f}" if r["final_accuracy"] != "" else "-"
            best = f"{r['best_accuracy']:.4f}" if r["best_accuracy"] != "" else "-"
            tt = f"{r['time_to_target_s']:.1f}" if r["time_to_target_s"] != "" else "-"
            rss = f"{r['peak_coordinator_rss_bytes'] / 1e6:,.0f}" if r["peak_coordinator_rss_bytes"] != "" else "-"
            status = r["status"] + (f": {r['error'][:100]}" if r["error"] else "")
            name = r["strategy"] + (" (one process, all data)" if r["strategy"] == "train" else "")
            up = fmt_mb(r["bytes_up_per_worker"]) if r["strategy"] != "train" else "-"
            down = fmt_mb(r["bytes_down_per_worker"]) if r["strategy"] != "train" else "-"
            L.append(f"| {name} | `{r['model']}` | {acc} | {best} | {tt} | {up} | {down} | {rss} | "
                     f"{r['wall_s']:.1f} | {status} |")
        L.append("")
    titles = {"accuracy_vs_round": "Accuracy after each round", "accuracy_vs_bytes": "Accuracy against bytes on the wire",
              "accuracy_vs_time": "Accuracy against wall time", "crossover": "The split-vs-federated crossover"}
    pngs = [p for p in plots if p.endswith(".png")]
    if pngs:
        L += ["## Plots", "", "Each as PNG and SVG in `plots/`; `plots/plots.gp` redraws them from `plots/data/`.", ""]
        for png in pngs:
            L += [f"### {titles.get(png[:-4], png[:-4])}", "", f"![{png[:-4]}](plots/{png})", ""]
    if suite.crossover:
        c = suite.crossover[0]
        L += ["## Bytes per epoch against the number of workers", "",
              f"p = {c['p']:,} examples, McMahan's CNN (N = {CNN_WEIGHTS:,} weights, 4 bytes each), cut after pool1 "
              f"(q = {CUT_FLOATS:,} floats per example, ηN = {BOTTOM_WEIGHTS} weights on the worker). FedAvg's "
              "closed form is 2NK; split learning's is 2pq + 2ηNK as Fedra relays the bottom weights through the "
              "coordinator (Singh et al. count one hand-over: 2pq + ηNK). Measured: the second epoch's frame bytes.", "",
              "| K | FedAvg measured (MB) | FedAvg 2NK (MB) | ratio | split measured (MB) | split 2pq+2ηNK (MB) | ratio |",
              "|---|---|---|---|---|---|---|"]
        for K in sorted({r["K"] for r in suite.crossover}):
            f = next((r for r in suite.crossover if r["K"] == K and r["strategy"] == "fedavg"), None)
            s = next((r for r in suite.crossover if r["K"] == K and r["strategy"] == "split"), None)
            cells = []
            for r in (f, s):
                cells += ([f"{r['measured_bytes'] / 1e6:,.1f}", f"{r['closed_form_bytes'] / 1e6:,.1f}",
                           f"{r['ratio']:.3f}"] if r else ["-", "-", "-"])
            L.append(f"| {K} | " + " | ".join(cells) + " |")
        L.append("")
    L += ["## Files", "",
          "`results.csv` (one row per run), `curves.csv` (every evaluation), `crossover.csv`, `plots/`, and "
          "`runs/NAME/` with each run's `command.txt`, `metrics.jsonl`, `summary.json` and logs "
          "(docs/outputs.md).", ""]
    path = os.path.join(a.out, "report.md")
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(L))
    os.replace(path + ".tmp", path)
    return path


def write_json(path, obj):
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(path + ".tmp", path)


def read_csv(path):
    def num(v):
        for kind in (int, float):
            try:
                return kind(v)
            except ValueError:
                pass
        return v
    if not os.path.exists(path):
        return []
    return [{k: num(v) for k, v in row.items()} for row in csv.DictReader(open(path))]
