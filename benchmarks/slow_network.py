#!/usr/bin/python3
"""FedAvg and split learning behind a slow link: a delaying TCP proxy between workers and coordinator.

  /usr/bin/python3 benchmarks/slow_network.py [--delay-ms 25] [--limit 4000] [--workers 2]

This machine's kernel has no sch_netem (`tc qdisc add ... netem` fails with "Specified qdisc kind
is unknown"), so the delay is added in user space: every byte a worker sends reaches the
coordinator --delay-ms later, and every byte back is held as long, so a round trip costs twice
that (25 ms each way: a 50 ms RTT). The proxy forwards in order, preserves TCP's stream and does
not limit bandwidth; it cannot drop packets (TCP would only turn a loss into a retransmission
delay), so there is no loss here.

Runs, each with and without the delay: FedAvg (CNN, 2 rounds of one local epoch) and split
learning (CNN cut after pool1, one epoch, workers in turn) with pipeline 1 and 4. Prints test
accuracy and the coordinator's fit time per round or epoch; the split rows show how much of
the RTT per step pipelining hides.
"""
import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


class DelayProxy:
    """Listens on 127.0.0.1:PORT and forwards to TARGET, holding every chunk `delay` seconds."""

    def __init__(self, target_port, delay):
        self.target_port = target_port
        self.delay = delay
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.port = None
        threading.Thread(target=self._run, daemon=True).start()
        self.ready.wait()

    def _run(self):
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()

    async def _pump(self, reader, writer):
        queue = asyncio.Queue()

        async def read():
            while True:
                data = await reader.read(1 << 16)
                await queue.put((time.monotonic() + self.delay, data))
                if not data:
                    return

        async def write():
            while True:
                due, data = await queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    writer.close()
                    return
                writer.write(data)
                await writer.drain()

        try:
            await asyncio.gather(read(), write())
        except (ConnectionError, OSError):
            writer.close()

    async def _client(self, reader, writer):
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))


def run(fedra, out, strategy_args, workers, limit, delay):
    os.makedirs(out, exist_ok=True)
    port_file = os.path.join(out, "port")
    coordinator = subprocess.Popen(
        [fedra, "coordinator", "--listen", "127.0.0.1:0", "--port-file", port_file, "--min-workers", str(workers),
         "--test-data", "fmnist:test_limit=2000", "--threads", "1", "--log-level", "warn", "--out", out]
        + strategy_args, stderr=open(os.path.join(out, "coordinator.log"), "w"))
    for _ in range(600):
        if os.path.exists(port_file):
            break
        time.sleep(0.05)
    port = int(open(port_file).read())
    if delay > 0:
        port = DelayProxy(port, delay).port
    procs = [subprocess.Popen(
        [fedra, "worker", "--connect", f"127.0.0.1:{port}", "--dataset", f"fmnist:limit={limit}",
         "--client", f"{i}/{workers}", "--name", f"worker-{i}", "--threads", "1", "--log-level", "warn"],
        stderr=open(os.path.join(out, f"worker-{i}.log"), "w")) for i in range(workers)]
    code = coordinator.wait(timeout=3600)
    for p in procs:
        p.wait(timeout=60)
    if code != 0:
        sys.exit(f"coordinator failed ({code}); see {out}/coordinator.log")
    return [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fedra", default=os.path.join(ROOT, "build", "fedra"))
    ap.add_argument("--delay-ms", type=float, default=25, help="one-way delay (default 25: a 50 ms RTT)")
    ap.add_argument("--limit", type=int, default=4000, help="training images in all (default 4000)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", help="keep the runs here (default: a temporary directory)")
    a = ap.parse_args()
    out = a.out or tempfile.mkdtemp(prefix="slow-network-")
    sgd = ["--lr", "0.01", "--momentum", "0.9", "--batch_size", "32"]
    configs = [
        ("fedavg", ["--strategy", "fedavg", "--model", "cnn", "--fedavg.rounds", "2"] +
         [f"--fedavg.{o[2:]}" if o.startswith("--") else o for o in sgd]),
        ("split, pipeline 1", ["--strategy", "split", "--model", "cnn:cut=pool1", "--split.epochs", "1"] +
         [f"--split.{o[2:]}" if o.startswith("--") else o for o in sgd]),
        ("split, pipeline 4", ["--strategy", "split", "--model", "cnn:cut=pool1", "--split.epochs", "1",
                               "--split.pipeline", "4"] + [f"--split.{o[2:]}" if o.startswith("--") else o for o in sgd]),
    ]
    rows = []
    for name, args in configs:
        for delay in (0.0, a.delay_ms / 1000):
            tag = f"{name.replace(', ', '-').replace(' ', '')}-{int(delay * 1000)}ms"
            print(f"running {name}, one-way delay {delay * 1000:.0f} ms ...", flush=True)
            t0 = time.time()
            lines = run(a.fedra, os.path.join(out, tag), args, a.workers, a.limit, delay)
            last = lines[-1]
            rows.append((name, delay * 1000, last.get("test_accuracy"), sum(l["fit_s"] for l in lines) / len(lines),
                         last.get("step_ms"), last.get("rtt_ms"), time.time() - t0))
    print(f"\nFashion-MNIST ({a.limit} training images), CNN, {a.workers} workers, batch 32; "
          f"delay added by a user-space proxy ({a.delay_ms:.0f} ms each way)")
    print("| run | one-way delay | test acc | fit s per round/epoch | step ms | rtt ms | wall s |")
    print("|---|---|---|---|---|---|---|")
    for name, d, acc, fit, step, rtt, wall in rows:
        f = lambda v, spec: format(v, spec) if v is not None else "-"
        print(f"| {name} | {d:.0f} ms | {f(acc, '.4f')} | {fit:.2f} | {f(step, '.1f')} | {f(rtt, '.1f')} | {wall:.1f} |")
    print(f"\nruns in {out}")


if __name__ == "__main__":
    main()
