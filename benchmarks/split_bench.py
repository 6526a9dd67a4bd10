#!/usr/bin/python3
"""split learning against torch.distributed.rpc and against one process, side by side in one run.

  /usr/bin/python3 benchmarks/split_bench.py [--fedra build/fedra] [--quick]

(a) Round trip of one split step on loopback: a 64x256 float32 activation up, its gradient down.
    Fedra: `fedra simulate --strategy split --workers 1` with mlp:784-256-10,cut=relu1, batch 64,
    one LibTorch thread per process; rtt_ms is measured by the worker from handing the
    activations to the kernel to having the gradient (mean over the turn).
      exchange  split.exchange_only: no compute on either side, the bare protocol round trip
      step      the real step: the coordinator runs the top (fc2, cross-entropy, backward, SGD)
    Peer: benchmarks/peer/rpc_split.py, rpc_sync with the same tensor (TensorPipe, same modes).
(b) Epoch throughput with pipelining: split training over one worker (1 thread) and the
    coordinator (1 thread) against `fedra train` of the same network in one process with 2
    threads, same batch size; examples per second of training (evaluation excluded).
      mlp:784-1024-512-10,cut=relu1   a cut that halves the work
      cnn:cut=pool1                   McMahan's CNN: the bottom takes ~8 ms of a ~35 ms step, so the
                                      coordinator's one thread bounds it (shown for honesty)
Ratios: (a) peer time / Fedra time; (b) split throughput / one-process throughput, medians of 3
interleaved repetitions (1 with --quick).
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile

from benchlib import arguments, run_peer


def fedra_rows(binary, cmd, args):
    with tempfile.TemporaryDirectory() as out:
        full = [binary, cmd, "--threads", "1" if cmd == "simulate" else "2", "--log-level", "warn",
                "--out", out] + args
        if cmd == "simulate":
            full += ["--strategy", "split", "--workers", "1", "--worker-threads", "1", "--test-data", "none",
                     "--split.eval_every", "0"]
        run = subprocess.run(full, capture_output=True, text=True)
        if run.returncode != 0:
            sys.exit(f"fedra {cmd} failed:\n" + run.stderr)
        return [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]


def peer(mode, steps):
    return run_peer("rpc_split.py", [mode, "--steps", str(steps)], "rpc peer")


def main():
    a = arguments().parse_args()
    rtt_steps = 500 if a.quick else 2000
    print("(a) split step round trip, 64x256 float32 up and down, loopback")
    print(f"  {'mode':10s} {'Fedra us':>10s} {'rpc us':>10s} {'ratio':>7s}")
    for mode in ("exchange", "step"):
        extra = ["--split.exchange_only", "true"] if mode == "exchange" else []
        rows = fedra_rows(a.fedra, "simulate",
                          ["--dataset", "fmnist", "--model", "mlp:784-256-10,cut=relu1", "--split.batch_size", "64",
                           "--split.max_steps", str(rtt_steps), "--split.epochs", "3"] + extra)
        f_us = statistics.median(r["rtt_ms"] for r in rows) * 1000
        p_us = peer(mode, rtt_steps)["median_us"]
        print(f"  {mode:10s} {f_us:10.1f} {p_us:10.1f} {p_us / f_us:6.2f}x")

    print("(b) epoch throughput: split with pipelining (1+1 threads) vs one process (2 threads)")
    print(f"  {'model':32s} {'mode':12s} {'examples/s':>11s} {'ratio':>7s}")
    cases = [("mlp:784-1024-512-10,cut=relu1", 300 if a.quick else 0, [1, 2, 4]),
             ("cnn:cut=pool1", 60 if a.quick else 200, [1, 4])]
    reps = 1 if a.quick else 3
    for model, max_steps, depths in cases:
        # Interleaved repetitions, medians: the 2-thread one-process run is the noisiest.
        one, split = [], {d: [] for d in depths}
        for _ in range(reps):
            cap = ["--max-steps", str(max_steps)] if max_steps else []
            one.append(fedra_rows(a.fedra, "train", ["--dataset", "fmnist", "--model", model, "--batch-size", "64"]
                                  + cap)[-1]["examples_per_s"])
            for d in depths:
                cap = ["--split.max_steps", str(max_steps)] if max_steps else []
                r = fedra_rows(a.fedra, "simulate", ["--dataset", "fmnist", "--model", model, "--split.batch_size",
                                                     "64", "--split.pipeline", str(d)] + cap)[-1]
                split[d].append(r["train_examples"] / r["fit_s"])
        base = statistics.median(one)
        print(f"  {model:32s} {'one process':12s} {base:11.0f} {'1.00x':>7s}   (runs: {', '.join(f'{v:.0f}' for v in one)})")
        for d in depths:
            eps = statistics.median(split[d])
            print(f"  {model:32s} {'pipeline ' + str(d):12s} {eps:11.0f} {eps / base:6.2f}x"
                  f"   (runs: {', '.join(f'{v:.0f}' for v in split[d])})")

if __name__ == "__main__":
    main()
