#!/usr/bin/python3
"""The peer for benchmarks/split_bench.py: a split-learning round trip with torch.distributed.rpc.

  /usr/bin/python3 benchmarks/peer/rpc_split.py exchange|step [--steps N] [--batch 64] [--width 256]

Two processes on loopback (TensorPipe backend, one thread each). The "worker" (rank 0) calls
the "server" (rank 1) with rpc_sync once per step, carrying a [batch, width] float32 activation;
the server answers with a tensor of the same shape.
  exchange  the server returns a constant gradient without computing (the bare round trip)
  step      the server runs the top of MLP 784-256-10 (Linear 256->10, cross-entropy, backward,
            SGD step) on the activation and labels and returns the cut gradient; the worker
            sends the activations of a fixed random batch (its bottom is not timed)
Prints one JSON line: mean and median round trip in microseconds over the timed steps.
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.distributed.rpc as rpc

_top = None
_opt = None
_grad = None


def exchange(act):
    global _grad
    if _grad is None or _grad.shape != act.shape:
        _grad = torch.full_like(act, 1e-6)
    return _grad


def step(act, labels):
    global _top, _opt
    if _top is None:
        torch.manual_seed(1)
        _top = torch.nn.Linear(act.shape[1], 10)
        _opt = torch.optim.SGD(_top.parameters(), lr=0.05)
    a = act.detach().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(_top(a), labels)
    _opt.zero_grad()
    loss.backward()
    _opt.step()
    return a.grad


def run(rank, args):
    torch.set_num_threads(1)
    opts = rpc.TensorPipeRpcBackendOptions(num_worker_threads=4, rpc_timeout=60)
    rpc.init_rpc("worker" if rank == 0 else "server", rank=rank, world_size=2, rpc_backend_options=opts)
    if rank == 0:
        torch.manual_seed(0)
        act = torch.randn(args.batch, args.width)
        labels = torch.randint(0, 10, (args.batch,))
        times = []
        for i in range(args.warmup + args.steps):
            t0 = time.perf_counter()
            if args.mode == "exchange":
                g = rpc.rpc_sync("server", exchange, args=(act,))
            else:
                g = rpc.rpc_sync("server", step, args=(act, labels))
            t1 = time.perf_counter()
            assert g.shape == act.shape
            if i >= args.warmup:
                times.append((t1 - t0) * 1e6)
        print(json.dumps({"mode": args.mode, "steps": args.steps, "mean_us": statistics.mean(times),
                          "median_us": statistics.median(times)}))
        sys.stdout.flush()
    rpc.shutdown()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["exchange", "step"])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--width", type=int, default=256)
    args = ap.parse_args()
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    os.environ["OMP_NUM_THREADS"] = "1"
    pid = os.fork()
    if pid == 0:
        run(1, args)
        os._exit(0)
    run(0, args)
    _, status = os.waitpid(pid, 0)
    sys.exit(os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    main()
