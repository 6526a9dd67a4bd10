#!/usr/bin/python3
"""The benchmark suite: every strategy on one dataset and budget, compared, with plots.

  /usr/bin/python3 benchmarks/suite.py quick                  # < 10 min on 2 cores
  /usr/bin/python3 benchmarks/suite.py full                   # the whole of Fashion-MNIST
  /usr/bin/python3 benchmarks/suite.py compare fedavg split --dataset SPEC [--model SPEC]

Every run is a real `fedra simulate` (coordinator + worker processes over loopback TCP) with the
same data, partition, seed, number of workers and epochs of data. Strategies and what they run
(SGD lr 0.01 momentum 0.9, batch 32, McMahan's CNN cut after pool1 where a cut is needed):
  fedavg    one local epoch per round, example-weighted average
  gradsum   gradients of 5 replicas summed every step (linear-scaling rule: reduce=sum)
  split     the CNN's bottom and the data on the workers, the top on the coordinator, workers in
            turn with the bottom weights passed on (labels go up with the activations)
  split-u   U-shaped split: the head and the labels stay on the workers too (--private-labels)
  psl       the partially separable loss on PSNet, each worker holding only its towers, its own
            data (data=worker), Adam 0.001, 100 examples per step in all (PSL.md's recipe)
  train     the CNN in one process on all the data (the centralised reference; no partition)
  NAME      any strategy a --plugin library registers (its budget options are set by name:
            rounds+local_epochs, or epochs; plus batch_size, lr, optimizer, momentum if it has them)
Partitions: iid, dirichlet:alpha=0.3 and shards:k=2 (McMahan's two-class shards) for every
strategy that takes one (train does not).

A second experiment redraws Singh et al.'s split-vs-federated communication figure: bytes per
epoch against the number of workers K, measured for FedAvg and split (forward and backward only,
no arithmetic: the bytes do not depend on it) beside the closed forms.

Output (DIR, default runs/bench-PROFILE-STAMP; docs/benchmarks.md, "The suite" describes it):
  results.csv          one row per run (rewritten after every run, so an interrupted suite keeps
                       what it finished)
  curves.csv           every evaluation of every run: epoch, accuracy, seconds, bytes
  crossover.csv        measured and closed-form bytes per epoch for each K
  report.md            the tables and the plots
  plots/*.png, *.svg   accuracy vs round, vs bytes, vs wall time; the crossover; plots.gp redraws them
  runs/NAME/           each run's metrics.jsonl, summary.json and worker logs
"""
import argparse
import csv
import datetime
import json
import math
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from suite_report import (BOTTOM_WEIGHTS, CNN_WEIGHTS, CUT_FLOATS, ETA_N_BYTES, N_BYTES, Q_BYTES, fail, fmt_mb,  # noqa: E402
                          log, machine, plot, read_csv, report, write_json)
ROOT = os.path.dirname(HERE)

PROFILES = {
    # dataset, epochs of data, workers, target accuracy, and the crossover experiment's data and Ks
    "quick": dict(dataset="fmnist:limit=10000", epochs=4, workers=5, target=0.80,
                  crossover_dataset="fmnist:limit=6000", crossover_k=[1, 2, 4, 8, 16, 32]),
    "full": dict(dataset="fmnist", epochs=3, workers=5, target=0.87,
                 crossover_dataset="fmnist", crossover_k=[1, 2, 4, 8, 16]),
}
BUILTIN = ["fedavg", "gradsum", "split", "split-u", "psl", "train"]
PARTITIONS = ["iid", "dirichlet:alpha=0.3", "shards:k=2"]

def examples_in(dataset):
    """Training examples a dataset spec yields, when the spec says (fmnist has 60,000)."""
    if dataset != "fmnist" and not dataset.startswith("fmnist:"):
        return None
    m = re.search(r"[:,]limit=(\d+)", dataset)
    return min(60000, int(m.group(1))) if m else 60000


def strategy_options(fedra, plugins):
    """{strategy: set(option names)} from `fedra simulate --help-all` with the plugins loaded."""
    cmd = [fedra, "simulate", "--help-all"] + sum((["--plugin", p] for p in plugins), [])
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        fail(f"`{' '.join(cmd)}` failed:\n{r.stderr.strip()}")
    opts = {}
    for name, opt in re.findall(r"--([A-Za-z0-9_-]+)\.([A-Za-z0-9_]+)", r.stdout):
        opts.setdefault(name, set()).add(opt)
    return opts


class Suite:
    def __init__(self, a, probe=True):
        self.a = a
        self.fedra = a.fedra
        self.plugins = [os.path.abspath(p) for p in a.plugin]
        self.options = strategy_options(self.fedra, self.plugins) if probe else {}
        self.rows = []
        self.curves = []
        self.crossover = []

    # ---- one run ------------------------------------------------------------------------------
    def command(self, strategy, partition, out):
        a = self.a
        W, E, B = a.workers, a.epochs, a.batch_size
        sgd = dict(optimizer="sgd", lr=a.lr, momentum=a.momentum)
        model = a.model
        cut_model = model if "cut=" in model else f"{model}{',' if ':' in model else ':'}cut={a.cut}"
        common = ["--dataset", a.dataset, "--seed", str(a.seed), "--log-level", "warn", "--out", out]
        sim = [self.fedra, "simulate", "--workers", str(W), "--partition", partition, "--threads", "1",
               "--worker-threads", "1"] + common + sum((["--plugin", p] for p in self.plugins), [])

        def opts(prefix, d):
            return sum(([f"--{prefix}.{k}", str(v)] for k, v in d.items()), [])

        if strategy == "train":
            cmd = [self.fedra, "train", "--model", model, "--epochs", str(E), "--batch-size", str(B),
                   "--lr", str(a.lr), "--momentum", str(a.momentum), "--threads", "2"] + common
            return cmd, model
        if strategy == "fedavg":
            return sim + ["--strategy", "fedavg", "--model", model] + opts(
                "fedavg", dict(rounds=E, local_epochs=1, batch_size=B, **sgd)), model
        if strategy == "gradsum":
            return sim + ["--strategy", "gradsum", "--model", model] + opts(
                "gradsum", dict(**self.step_budget(B), batch_size=B, reduce="sum", **sgd)), model
        if strategy in ("split", "split-u"):
            extra = ["--private-labels"] if strategy == "split-u" else []
            return sim + extra + ["--strategy", "split", "--model", cut_model] + opts(
                "split", dict(epochs=E, batch_size=B, labels="worker" if strategy == "split-u" else "coordinator",
                              **sgd)), cut_model
        if strategy == "psl":
            return sim + ["--strategy", "psl", "--model", "psnet", "--loss", "psl"] + opts(
                "psl", dict(**self.step_budget(max(1, 100 // W)), data="worker", batch_size=max(1, 100 // W),
                            optimizer="adam", lr=0.001)), "psnet"
        # A plugin's strategy: set the budget through whichever of the usual options it has.
        have = self.options.get(strategy, set())
        d = {}
        if {"rounds", "local_epochs"} <= have:
            d.update(rounds=E, local_epochs=1)
        elif "epochs" in have:
            d["epochs"] = E
        else:
            log(f"  note: {strategy} has neither rounds+local_epochs nor epochs; it runs its own default budget")
        for k, v in dict(batch_size=B, **sgd).items():
            if k in have:
                d[k] = v
        return sim + ["--strategy", strategy, "--model", model] + opts(strategy, d), model

    def step_budget(self, per_worker_batch):
        """Steps for the step-driven strategies (gradsum, psl: every worker takes a batch each step).

        Left to themselves they count an epoch as a pass over the largest worker's data, which
        under label skew is up to several times the average: the budget would not match. With the
        dataset's size known, E epochs are E x n / (workers x batch) steps, one round per epoch.
        """
        n = examples_in(self.a.dataset)
        if n is None:
            return dict(epochs=self.a.epochs, steps_per_round=0)
        per_epoch = max(1, math.ceil(n / (self.a.workers * per_worker_batch)))
        return dict(steps=per_epoch * self.a.epochs, steps_per_round=per_epoch)

    def run(self, index, total, strategy, partition):
        a = self.a
        tag = strategy if strategy == "train" else f"{strategy}-{partition.replace(':', '-').replace('=', '').replace(',', '-')}"
        out = os.path.join(a.out, "runs", tag)
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out, exist_ok=True)
        cmd, model = self.command(strategy, partition, out)
        for opt, value in self.overrides(strategy):  # --set replaces the suite's own value
            if opt in cmd:
                cmd[cmd.index(opt) + 1] = value
            else:
                cmd += [opt, value]
        with open(os.path.join(out, "command.txt"), "w") as f:
            f.write(shlex.join(cmd) + "\n")
        label = f"[{index:>2}/{total}] {strategy:<9} {partition if strategy != 'train' else '(all data)':<20}"
        tty = sys.stdout.isatty()
        if tty:
            print(f"{label} ...", end="", flush=True)
        t0 = time.time()
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=a.run_timeout)
            code, stderr = r.returncode, r.stderr
        except subprocess.TimeoutExpired as e:
            code, stderr = -1, f"timed out after {a.run_timeout} s\n{e.stderr or ''}"
        wall = time.time() - t0
        with open(os.path.join(out, "stderr.log"), "w") as f:
            f.write(stderr if isinstance(stderr, str) else stderr.decode(errors="replace"))
        row = self.collect(strategy, partition, model, out, code, stderr, wall)
        self.rows.append(row)
        acc = f"acc {row['final_accuracy']:.4f}" if row["final_accuracy"] != "" else "no accuracy"
        print(f"{chr(13) if tty else ''}{label} {row['status']:<9} {acc}  {wall:6.1f} s" +
              (f"  ({row['error'][:120]})" if row["error"] else ""), flush=True)
        self.write_results()

    def overrides(self, strategy):
        out = []
        for s in self.a.set:
            key, _, value = s.partition("=")
            name, _, opt = key.partition(".")
            if not opt or not value:
                fail(f"--set takes STRATEGY.OPTION=VALUE, got '{s}'")
            if name == strategy or (name == "split" and strategy == "split-u"):
                out.append((f"--{'split' if name == 'split-u' else name}.{opt}", value))
        return out

    def collect(self, strategy, partition, model, out, code, stderr, wall):
        lines = []
        path = os.path.join(out, "metrics.jsonl")
        if os.path.exists(path):
            lines = [json.loads(l) for l in open(path) if l.strip()]
        summary = {}
        if os.path.exists(os.path.join(out, "summary.json")):
            summary = json.load(open(os.path.join(out, "summary.json")))
        config = summary.get("config", {})
        local_epochs = float(config.get(f"{strategy}.local_epochs", config.get("fedavg.local_epochs", 1)) or 1)
        target_s = ""
        spr = float(config.get(f"{strategy}.steps_per_round", 0) or 0)
        for l in lines:
            if spr > 0 and "first_step" in l:  # step-driven: steps_per_round steps are one epoch of data
                epoch = (l["first_step"] + l["steps"]) / spr
            elif "epoch" in l:
                epoch = l["epoch"]
            else:  # FedAvg-style rounds: local_epochs passes over every worker's data each
                epoch = l["round"] * local_epochs
            up, down = l.get("bytes_up", 0), l.get("bytes_down", 0)
            if "test_accuracy" in l:
                self.curves.append(dict(strategy=strategy, partition=partition, round=l["round"], epoch=epoch,
                                        elapsed_s=l.get("elapsed_s", ""), bytes=up + down,
                                        test_accuracy=l["test_accuracy"], test_loss=l.get("test_loss", "")))
                if target_s == "" and l["test_accuracy"] >= self.a.target:
                    target_s = l.get("elapsed_s", "")
        last = lines[-1] if lines else {}
        ups = [v for k, v in last.items() if k.startswith("bytes_up.")]
        downs = [v for k, v in last.items() if k.startswith("bytes_down.")]
        accs = [l["test_accuracy"] for l in lines if "test_accuracy" in l]
        error = ""
        status = summary.get("status", "failed" if code != 0 else "completed")
        if code != 0:
            error = summary.get("error") or (stderr.strip().splitlines() or ["exit code %d" % code])[-1]
            status = "failed" if status == "completed" else status
        return dict(
            strategy=strategy, partition=partition if strategy != "train" else "", model=model,
            workers=self.a.workers if strategy != "train" else 1, epochs=self.a.epochs,
            final_accuracy=accs[-1] if accs else "", best_accuracy=max(accs) if accs else "",
            target_accuracy=self.a.target, time_to_target_s=target_s,
            bytes_up_per_worker=sum(ups) / len(ups) if ups else 0,
            bytes_down_per_worker=sum(downs) / len(downs) if downs else 0,
            bytes_total=last.get("bytes_up", 0) + last.get("bytes_down", 0),
            peak_coordinator_rss_bytes=summary.get("peak_rss_bytes", last.get("peak_rss_bytes", "")),
            elapsed_s=summary.get("elapsed_s", ""), wall_s=round(wall, 2), status=status, error=error,
            run_dir=os.path.relpath(out, self.a.out))

    # ---- the crossover experiment -----------------------------------------------------------
    def run_crossover(self):
        a = self.a
        data = a.crossover_dataset
        p = examples_in(data)
        if p is None:
            log(f"crossover: skipped, the number of examples in '{data}' is not known (use fmnist[:limit=N])")
            return
        log(f"crossover: bytes per epoch against workers K on {data} (p = {p}), K = {a.crossover_k}")
        for K in a.crossover_k:
            for strategy in ("fedavg", "split"):
                out = os.path.join(a.out, "crossover", f"{strategy}-k{K}")
                shutil.rmtree(out, ignore_errors=True)
                base = [self.fedra, "simulate", "--workers", str(K), "--dataset", data, "--partition", "iid",
                        "--seed", str(a.seed), "--test-data", "none", "--threads", "1", "--worker-threads", "1",
                        "--log-level", "warn", "--out", out]
                if strategy == "fedavg":  # two rounds, no local training: the bytes of an epoch's round
                    cmd = base + ["--strategy", "fedavg", "--model", "cnn", "--fedavg.rounds", "2",
                                  "--fedavg.exchange_only", "true"]
                else:  # two epochs of real-sized activations and gradients, no arithmetic
                    cmd = base + ["--strategy", "split", "--model", f"cnn:cut={a.cut}", "--split.epochs", "2",
                                  "--split.batch_size", str(a.batch_size), "--split.exchange_only", "true"]
                t0 = time.time()
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=a.run_timeout)
                if r.returncode != 0:
                    log(f"  K={K} {strategy}: failed: {r.stderr.strip().splitlines()[-1:]}")
                    continue
                lines = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
                # The second epoch alone: the steady state, handshakes excluded.
                measured = (lines[-1]["bytes_up"] + lines[-1]["bytes_down"] -
                            lines[-2]["bytes_up"] - lines[-2]["bytes_down"])
                form = 2 * N_BYTES * K if strategy == "fedavg" else 2 * p * Q_BYTES + 2 * ETA_N_BYTES * K
                self.crossover.append(dict(strategy=strategy, K=K, p=p, measured_bytes=measured,
                                           closed_form_bytes=form, ratio=measured / form,
                                           wall_s=round(time.time() - t0, 2)))
                log(f"  K={K:<3} {strategy:<6} {measured / 1e6:10.1f} MB per epoch  (closed form "
                    f"{form / 1e6:.1f} MB, ratio {measured / form:.3f})  {time.time() - t0:.1f} s")
        self.write_csv("crossover.csv", self.crossover)

    # ---- files --------------------------------------------------------------------------------
    def write_csv(self, name, rows):
        if not rows:
            return
        path = os.path.join(self.a.out, name)
        with open(path + ".tmp", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
            w.writeheader()
            w.writerows(rows)
            f.flush()
            os.fsync(f.fileno())
        os.replace(path + ".tmp", path)

    def write_results(self):
        self.write_csv("results.csv", self.rows)
        self.write_csv("curves.csv", self.curves)


# ---- plots ------------------------------------------------------------------------------------
def replot(names):
    if len(names) != 1:
        fail("replot takes one suite output directory: `suite.py replot DIR`")
    out = os.path.abspath(names[0])
    if not os.path.exists(os.path.join(out, "suite.json")):
        fail(f"{out} has no suite.json: not a suite's output directory")
    a = argparse.Namespace(**json.load(open(os.path.join(out, "suite.json"))))
    a.out = out
    suite = Suite(a, probe=False)
    suite.rows = read_csv(os.path.join(out, "results.csv"))
    for r in suite.rows:  # the partition column of a run like "train" is empty, not a number
        r["partition"] = "" if r["partition"] == "" else str(r["partition"])
    suite.curves = read_csv(os.path.join(out, "curves.csv"))
    for c in suite.curves:
        c["partition"] = "" if c["partition"] == "" else str(c["partition"])
    suite.crossover = read_csv(os.path.join(out, "crossover.csv"))
    plots = plot(suite)
    path = report(suite, plots, datetime.datetime.fromisoformat(a.started), getattr(a, "wall_s", 0))
    log(f"replotted {len(plots)} plot files; report {path}")
    return 0


def main():
    ap = argparse.ArgumentParser(
        prog="suite.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["quick", "full", "compare", "replot"],
                    help="quick or full profile; compare the strategies named after it; or replot DIR: redraw "
                         "the plots and report of a finished (or interrupted) suite from its CSV files")
    ap.add_argument("names", nargs="*", help="compare: the strategies to compare (e.g. fedavg split); replot: DIR")
    ap.add_argument("--strategies", help=f"comma list to run (default: {','.join(BUILTIN)} plus plugins' strategies)")
    ap.add_argument("--partitions", help=f"comma-free list separated by ';' (default: {';'.join(PARTITIONS)}; "
                                         "compare: iid)")
    ap.add_argument("--dataset", help="dataset spec (docs/data.md); default by profile")
    ap.add_argument("--epochs", type=int, help="epochs of data per run; default by profile")
    ap.add_argument("--workers", type=int, help="workers per run; default 5")
    ap.add_argument("--target", type=float, help="accuracy for the time-to-target column; default by profile")
    ap.add_argument("--model", default="cnn", help="model for every strategy but psl (default cnn)")
    ap.add_argument("--cut", default="pool1", help="split learning's cut layer when --model has no cut= (default pool1)")
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--plugin", action="append", default=[], help="load strategies from this library (repeatable)")
    ap.add_argument("--set", action="append", default=[], metavar="STRATEGY.OPTION=VALUE",
                    help="extra strategy option for its runs, e.g. split.pipeline=4 (repeatable)")
    ap.add_argument("--no-crossover", action="store_true", help="skip the bytes-vs-workers experiment")
    ap.add_argument("--crossover-k", help="comma list of worker counts for the crossover experiment")
    ap.add_argument("--run-timeout", type=int, default=3600, help="seconds before a run is stopped (default 3600)")
    ap.add_argument("--fedra", default=os.path.join(ROOT, "build", "fedra"), help="the fedra binary")
    ap.add_argument("--out", help="output directory (default runs/bench-MODE-STAMP)")
    a = ap.parse_args()
    if a.mode == "replot":
        return replot(a.names)
    a.command_line = shlex.join(["benchmarks/suite.py"] + sys.argv[1:])
    if not os.access(a.fedra, os.X_OK):
        fail(f"{a.fedra} is not an executable; build it first (./scripts/build.sh fedra) or pass --fedra")

    profile = PROFILES["full" if a.mode == "full" else "quick"]
    a.profile_label = a.mode if a.mode != "compare" else "compare " + " vs ".join(a.names)
    if a.mode == "compare":
        if len(a.names) < 1:
            fail("compare needs the strategies to compare, e.g. `suite.py compare fedavg split`")
        if a.strategies:
            fail("compare takes the strategies as arguments, not --strategies")
        a.strategies = ",".join(a.names)
        if not a.partitions:
            a.partitions = "iid"
        if not a.crossover_k and not ({"fedavg", "split"} <= set(a.names)):
            a.no_crossover = True
    elif a.names:
        fail(f"'{a.mode}' takes no strategy names (did you mean `compare {' '.join(a.names)}`?)")
    a.dataset = a.dataset or profile["dataset"]
    a.epochs = a.epochs or profile["epochs"]
    a.workers = a.workers or profile["workers"]
    a.target = a.target if a.target is not None else profile["target"]
    a.crossover_dataset = profile["crossover_dataset"] if a.dataset == profile["dataset"] else a.dataset
    a.crossover_k = [int(k) for k in a.crossover_k.split(",")] if a.crossover_k else profile["crossover_k"]
    a.partitions = a.partitions.split(";") if a.partitions else PARTITIONS
    suite = Suite(a)
    plugin_strategies = sorted(set(suite.options) - {"fedavg", "gradsum", "split", "psl"}) if a.plugin else []
    a.strategies = a.strategies.split(",") if a.strategies else BUILTIN + plugin_strategies
    known = set(suite.options) | {"split-u", "train"}
    for s in a.strategies:
        if s not in known:
            fail(f"unknown strategy '{s}'; known: {', '.join(sorted(known))} (a plugin's needs --plugin PATH)")
    if a.workers < 1 or a.epochs < 1:
        fail("--workers and --epochs must be >= 1")

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    a.out = os.path.abspath(a.out or os.path.join("runs", f"bench-{a.mode}-{stamp}"))
    os.makedirs(a.out, exist_ok=True)
    started = datetime.datetime.now()
    t0 = time.time()
    a.commit = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"], capture_output=True,
                              text=True).stdout.strip() or "unknown"
    settings = {k: v for k, v in vars(a).items() if k not in ("names", "set", "mode") or k == "mode"}
    settings["set"] = a.set
    settings["started"] = started.isoformat()
    settings["commit"] = a.commit
    write_json(os.path.join(a.out, "suite.json"), settings)
    jobs = []
    for s in a.strategies:
        if s == "train":
            jobs.append((s, ""))
        else:
            jobs += [(s, p) for p in a.partitions]
    log(f"suite {a.profile_label}: {len(jobs)} runs on {a.dataset}, {a.workers} workers, {a.epochs} epochs each; "
        f"output in {a.out}")
    try:
        for i, (s, p) in enumerate(jobs, 1):
            suite.run(i, len(jobs), s, p)
        if not a.no_crossover:
            suite.run_crossover()
    except KeyboardInterrupt:
        log("\ninterrupted: writing the report for the runs that finished")
    settings["wall_s"] = time.time() - t0
    write_json(os.path.join(a.out, "suite.json"), settings)
    plots = plot(suite)
    path = report(suite, plots, started, time.time() - t0)
    failed = [r for r in suite.rows if r["status"] != "completed"]
    log(f"suite done in {(time.time() - t0) / 60:.1f} min: {len(suite.rows) - len(failed)} of {len(suite.rows)} runs "
        f"completed; report {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
