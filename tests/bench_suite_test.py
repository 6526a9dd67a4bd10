#!/usr/bin/python3
"""The benchmark suite end to end, small: benchmarks/suite.py compare on 1,500 Fashion-MNIST images.

  bench_suite_test.py SOURCE_DIR FEDRA_BINARY FEDMEDIAN_PLUGIN

Runs fedavg, split-u, psl, the fedmedian plugin and train, IID and shards:k=2, 3 workers, 2
epochs, with psl given a bad learning rate so that its runs fail; then checks that
  - the suite reports the failure (exit 1) and still ran and recorded everything else;
  - results.csv has a row per run with sane accuracy, bytes and memory figures;
  - the plugin's budget went through its own options (fedmedian.rounds = 2);
  - curves.csv has every evaluation, epochs rising;
  - the crossover experiment's measured bytes equal the closed forms within 1%;
  - report.md has the tables and embeds the plots, which exist as PNG and SVG.
"""
import csv
import json
import os
import subprocess
import sys
import tempfile

failures = []


def check(ok, what):
    if not ok:
        failures.append(what)
        print(f"FAIL: {what}")


def main():
    src, fedra, plugin = sys.argv[1:4]
    out = tempfile.mkdtemp(prefix="bench-suite-test-")
    cmd = ["/usr/bin/python3", os.path.join(src, "benchmarks/suite.py"), "compare", "fedavg", "split-u", "psl",
           "fedmedian", "train", "--plugin", plugin, "--fedra", fedra, "--dataset", "fmnist:limit=1500",
           "--workers", "3", "--epochs", "2", "--partitions", "iid;shards:k=2", "--target", "0.5",
           "--set", "psl.lr=-1", "--crossover-k", "1,3", "--out", out]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    print(r.stdout)
    print(r.stderr, file=sys.stderr)
    check(r.returncode == 1, f"suite exit code {r.returncode}, expected 1 (the psl runs fail)")

    rows = list(csv.DictReader(open(os.path.join(out, "results.csv"))))
    by = {(x["strategy"], x["partition"]): x for x in rows}
    expected = [(s, p) for s in ("fedavg", "split-u", "psl", "fedmedian") for p in ("iid", "shards:k=2")]
    expected.append(("train", ""))
    check(sorted(by) == sorted(expected), f"runs recorded {sorted(by)}, expected {sorted(expected)}")
    for key, row in by.items():
        if key[0] == "psl":
            check(row["status"] == "failed", f"{key} status {row['status']}, expected failed")
            check("lr must be > 0" in row["error"], f"{key} error '{row['error']}' does not say why")
            continue
        check(row["status"] == "completed", f"{key} status {row['status']}: {row['error']}")
        acc = float(row["final_accuracy"] or 0)
        check(0.1 < acc <= 1.0, f"{key} final accuracy {acc} is not above chance")
        check(float(row["best_accuracy"]) >= acc, f"{key} best accuracy below the final one")
        rss = float(row["peak_coordinator_rss_bytes"] or 0)
        check(20e6 < rss < 8e9, f"{key} peak coordinator RSS {rss} bytes is implausible")
        if key[0] == "train":
            check(float(row["bytes_total"]) == 0, "train sent bytes")
            continue
        up, down = float(row["bytes_up_per_worker"]), float(row["bytes_down_per_worker"])
        if key[0] in ("fedavg", "fedmedian"):
            # 2 rounds, the whole CNN (1,663,370 float32) each way per round, plus framing
            check(2 * 6653480 <= up < 2 * 6653480 * 1.01, f"{key} bytes up per worker {up}")
            check(2 * 6653480 <= down < 2 * 6653480 * 1.01, f"{key} bytes down per worker {down}")
        else:
            check(up > 0 and down > 0, f"{key} bytes per worker {up} up {down} down")
    train = by.get(("train", ""), {})
    check(float(train.get("final_accuracy") or 0) > 0.6, f"train reached {train.get('final_accuracy')}")
    check(by[("fedavg", "iid")]["time_to_target_s"] != "", "fedavg iid never reached 0.5 (time to target empty)")

    summary = json.load(open(os.path.join(out, by[("fedmedian", "iid")]["run_dir"], "summary.json")))
    check(summary["config"].get("fedmedian.rounds") == "2", f"fedmedian.rounds = {summary['config'].get('fedmedian.rounds')}")
    check(summary["config"].get("fedmedian.lr") == "0.01", f"fedmedian.lr = {summary['config'].get('fedmedian.lr')}")

    curves = list(csv.DictReader(open(os.path.join(out, "curves.csv"))))
    for key in expected:
        if key[0] == "psl":
            continue
        pts = [c for c in curves if (c["strategy"], c["partition"]) == key]
        epochs = [float(c["epoch"]) for c in pts]
        check(len(pts) == 2 and epochs == sorted(epochs) and abs(epochs[-1] - 2) < 1e-9,
              f"{key} curve epochs {epochs}, expected 2 evaluations ending at epoch 2")

    cross = list(csv.DictReader(open(os.path.join(out, "crossover.csv"))))
    check(len(cross) == 4, f"{len(cross)} crossover rows, expected 4")
    for c in cross:
        ratio = float(c["ratio"])
        check(0.999 <= ratio < 1.01, f"crossover {c['strategy']} K={c['K']}: measured / closed form = {ratio}")

    report = open(os.path.join(out, "report.md")).read()
    for s in ("fedavg", "split-u", "psl", "fedmedian", "train (one process, all data)"):
        check(f"| {s} |" in report, f"report.md has no row for {s}")
    check("## Partition `shards:k=2`" in report, "report.md has no shards:k=2 table")
    for name in ("accuracy_vs_round", "accuracy_vs_bytes", "accuracy_vs_time", "crossover"):
        check(f"(plots/{name}.png)" in report, f"report.md does not embed {name}.png")
        png = os.path.join(out, "plots", name + ".png")
        svg = os.path.join(out, "plots", name + ".svg")
        check(os.path.exists(png) and open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n", f"{png} is not a PNG")
        check(os.path.exists(svg) and "<svg" in open(svg).read(), f"{svg} is not an SVG")
    if failures:
        print(f"{len(failures)} check(s) failed; the suite's output is in {out}")
        return 1
    print(f"PASS: {len(rows)} runs recorded (psl failing as arranged), crossover within 1% of the closed forms, "
          f"report and plots written ({out})")
    subprocess.run(["rm", "-rf", out])
    return 0


if __name__ == "__main__":
    sys.exit(main())
