#!/usr/bin/python3
"""Python baseline for benchmark (b): FedAvg rounds as Python frameworks do them.

2 worker processes, the same 10.1M-float model as benchmarks/fedavg-round.cfg
(Linear(1000, 10000), ReLU, Linear(10000, 10)), one SGD step of local work on 8 synthetic
examples, example-weighted averaging on the server. Parameters travel the way Flower serialises
them (flwr.common.parameter: each ndarray through np.save into bytes, np.load back), over plain
length-prefixed TCP on loopback instead of gRPC, so this is a lower bound on the cost of such a
framework: no protobuf, no gRPC, no message-size limits. Flower itself is not installable here
(no PyPI).

Prints one JSON object: per-round seconds (the span from sending the model to having averaged
the results, the same span Fedra reports as fit_s).
Usage: /usr/bin/python3 benchmarks/peer/fedavg_round_numpy.py [--rounds 20]
"""
import argparse
import io
import json
import multiprocessing as mp
import socket
import struct
import threading
import time

import numpy as np
import torch


def model():
    return torch.nn.Sequential(torch.nn.Linear(1000, 10000), torch.nn.ReLU(), torch.nn.Linear(10000, 10))


def ndarrays_to_bytes(arrays):
    out = []
    for a in arrays:
        buf = io.BytesIO()
        np.save(buf, a, allow_pickle=False)
        out.append(buf.getvalue())
    return out


def bytes_to_ndarrays(blobs):
    return [np.load(io.BytesIO(b), allow_pickle=False) for b in blobs]


def send_blobs(sock, blobs, extra=0):
    header = struct.pack("<QQ", len(blobs), extra) + b"".join(struct.pack("<Q", len(b)) for b in blobs)
    sock.sendall(header)
    for b in blobs:
        sock.sendall(b)


def recv_exact(sock, n):
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            raise EOFError("peer closed")
        got += k
    return bytes(buf)


def recv_blobs(sock):
    count, extra = struct.unpack("<QQ", recv_exact(sock, 16))
    sizes = struct.unpack("<%dQ" % count, recv_exact(sock, 8 * count)) if count else ()
    return [recv_exact(sock, s) for s in sizes], extra


def worker(port, seed):
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    m = model()
    x = torch.rand(32, 1000)
    y = torch.randint(0, 10, (32,))
    while True:
        blobs, _ = recv_blobs(sock)
        if not blobs:
            return
        arrays = bytes_to_ndarrays(blobs)
        with torch.no_grad():
            for p, a in zip(m.parameters(), arrays):
                p.copy_(torch.from_numpy(a))
        opt = torch.optim.SGD(m.parameters(), lr=0.01)
        idx = torch.randint(0, 32, (8,))
        loss = torch.nn.functional.cross_entropy(m(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        send_blobs(sock, ndarrays_to_bytes([p.detach().numpy() for p in m.parameters()]), extra=32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(2)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(args.workers)
    port = server.getsockname()[1]
    procs = [mp.Process(target=worker, args=(port, i)) for i in range(args.workers)]
    for p in procs:
        p.start()
    conns = []
    for _ in range(args.workers):
        c, _ = server.accept()
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conns.append(c)
    torch.manual_seed(1)
    weights = [p.detach().numpy().copy() for p in model().parameters()]
    times = []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        blobs = ndarrays_to_bytes(weights)
        results = [None] * len(conns)

        def exchange(i):
            send_blobs(conns[i], blobs)
            results[i] = recv_blobs(conns[i])

        threads = [threading.Thread(target=exchange, args=(i,)) for i in range(len(conns))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        total = sum(n for _, n in results)
        avg = [np.zeros_like(w) for w in weights]
        for blobs_i, n in results:
            for a, w in zip(avg, bytes_to_ndarrays(blobs_i)):
                a += w * (n / total)
        weights = avg
        times.append(time.perf_counter() - t0)
    for c in conns:
        send_blobs(c, [])
    for p in procs:
        p.join()
    print(json.dumps({"round_s": times}))


if __name__ == "__main__":
    main()
