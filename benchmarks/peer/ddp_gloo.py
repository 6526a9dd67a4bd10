#!/usr/bin/python3
"""The PyTorch peer for the gradsum benchmarks: DistributedDataParallel / gloo, 2 processes on
loopback, one intra-op thread each (Debian's python3-torch; run with /usr/bin/python3).

  ddp_gloo.py step       [--steps 1000]  MLP 784-256-10, batch 64 per worker, SGD; ms per step
  ddp_gloo.py allreduce  [--iters 20] [--world 2]
                                         all_reduce(SUM) of 25,005,000 float32 (100.02 MB)

Prints one JSON object on stdout (rank 0's measurements).
"""
import argparse
import json
import os
import socket
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ELEMENTS = 25_005_000  # the parameters of Fedra's mlp:5000-5000, the 100 MB exchange


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def step_bench(rank, steps):
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 10))
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(100 + rank)
    x = torch.rand(30000, 784, generator=gen)  # each worker's half of a Fashion-MNIST-sized set
    y = torch.randint(0, 10, (30000,), generator=gen)
    perm = torch.randperm(30000, generator=gen)

    def one(i):
        idx = perm[(i * 64) % 29952:(i * 64) % 29952 + 64]
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(ddp(x[idx]), y[idx]).backward()
        opt.step()

    for i in range(50):
        one(i)
    dist.barrier()
    t0 = time.perf_counter()
    for i in range(steps):
        one(i)
    dist.barrier()
    return {"step_ms": 1e3 * (time.perf_counter() - t0) / steps, "steps": steps}


def allreduce_bench(rank, iters):
    t = torch.full((ELEMENTS,), 1e-6)
    times = []
    for i in range(iters + 2):
        dist.barrier()
        t0 = time.perf_counter()
        dist.all_reduce(t)
        times.append(time.perf_counter() - t0)
    times = times[2:]
    med = statistics.median(times)
    return {"allreduce_ms": 1e3 * med, "bytes": ELEMENTS * 4, "gb_per_s": ELEMENTS * 4 / med / 1e9,
            "iters": iters}


def worker(rank, args, port, queue):
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=args.world)
    result = step_bench(rank, args.steps) if args.mode == "step" else allreduce_bench(rank, args.iters)
    dist.barrier()
    if rank == 0:
        queue.put(result)
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["step", "allreduce"])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--world", type=int, default=2, help="processes (allreduce only; step uses 2)")
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    port = free_port()
    if args.mode == "step":
        args.world = 2
    procs = [ctx.Process(target=worker, args=(r, args, port, queue)) for r in range(args.world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    if any(p.exitcode != 0 for p in procs):
        sys.exit("a DDP process failed")
    print(json.dumps(queue.get()))


if __name__ == "__main__":
    main()
