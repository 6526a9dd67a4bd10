#!/usr/bin/python3
"""FedAvg and split learning over a slow, lossy link: network namespaces, real packet delay and loss.

  /usr/bin/python3 benchmarks/slow_network.py [--delay-ms 25] [--loss 1] [--limit 4000] [--workers 2]

Needs root. The coordinator runs in one network namespace (10.77.0.1), the workers in another
(10.77.0.2); between them, every IP packet is held --delay-ms each way and dropped with
probability --loss percent, each direction (benchmarks/netlink.py: netem's delay and loss done in
user space over TUN devices, because this machine's kernel has no sch_netem). The coordinator
listens on a non-loopback address, so it runs with mutual TLS (`fedra certs`), as a deployment
would (--insecure: plain TCP instead).

Runs, each over a clean link (no delay, no loss), a delayed one and a delayed and lossy one:
FedAvg (CNN, 2 rounds of one local epoch) and split learning (CNN cut after pool1, one epoch,
workers in turn) with pipeline 1 and 4. Prints test accuracy and the coordinator's fit time per
round or epoch; the split rows show how much of the round trip per step pipelining hides.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from netlink import TunLink  # noqa: E402


def run(fedra, out, strategy_args, workers, limit, link, certs):
    os.makedirs(out, exist_ok=True)
    port_file = os.path.join(out, "port")
    host = TunLink.ADDRESSES[0]
    if certs:
        server_tls = ["--tls-cert", f"{certs}/coordinator.pem", "--tls-key", f"{certs}/coordinator.key",
                      "--tls-ca", f"{certs}/ca.pem"]
    else:
        server_tls = ["--insecure"]
    coordinator = subprocess.Popen(
        link.ns_exec(0) + [fedra, "coordinator", "--listen", f"{host}:0", "--port-file", port_file,
                           "--min-workers", str(workers), "--test-data", "fmnist:test_limit=2000", "--threads", "1",
                           "--log-level", "warn", "--out", out] + server_tls + strategy_args,
        stderr=open(os.path.join(out, "coordinator.log"), "w"))
    for _ in range(600):
        if os.path.exists(port_file) or coordinator.poll() is not None:
            break
        time.sleep(0.05)
    if not os.path.exists(port_file):
        sys.exit(f"the coordinator did not start; see {out}/coordinator.log")
    port = int(open(port_file).read())
    procs = []
    for i in range(workers):
        tls = ["--tls-ca", f"{certs}/ca.pem", "--tls-cert", f"{certs}/worker-{i}.pem",
               "--tls-key", f"{certs}/worker-{i}.key"] if certs else []
        procs.append(subprocess.Popen(
            link.ns_exec(1) + [fedra, "worker", "--connect", f"{host}:{port}", "--dataset", f"fmnist:limit={limit}",
                               "--client", f"{i}/{workers}", "--name", f"worker-{i}", "--threads", "1",
                               "--log-level", "warn"] + tls,
            stderr=open(os.path.join(out, f"worker-{i}.log"), "w")))
    code = coordinator.wait(timeout=3600)
    for p in procs:
        p.wait(timeout=120)
    if code != 0:
        sys.exit(f"coordinator failed ({code}); see {out}/coordinator.log")
    return [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fedra", default=os.path.join(ROOT, "build", "fedra"))
    ap.add_argument("--delay-ms", type=float, default=25, help="one-way delay (default 25: a 50 ms RTT)")
    ap.add_argument("--loss", type=float, default=1.0, help="packet loss in percent, each direction (default 1)")
    ap.add_argument("--limit", type=int, default=4000, help="training images in all (default 4000)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--insecure", action="store_true", help="plain TCP instead of mutual TLS")
    ap.add_argument("--out", help="keep the runs here (default: a temporary directory)")
    a = ap.parse_args()
    out = a.out or tempfile.mkdtemp(prefix="slow-network-")
    fedra = os.path.abspath(a.fedra)
    certs = None
    if not a.insecure:
        certs = os.path.join(out, "certs")
        if not os.path.exists(os.path.join(certs, "ca.pem")):
            subprocess.run([fedra, "certs", "--out", certs, "--hosts", TunLink.ADDRESSES[0],
                            "--workers", str(a.workers)], check=True, stdout=subprocess.DEVNULL)
    sgd = ["--lr", "0.01", "--momentum", "0.9", "--batch_size", "32"]
    configs = [
        ("fedavg", ["--strategy", "fedavg", "--model", "cnn", "--fedavg.rounds", "2"] +
         [f"--fedavg.{o[2:]}" if o.startswith("--") else o for o in sgd]),
        ("split, pipeline 1", ["--strategy", "split", "--model", "cnn:cut=pool1", "--split.epochs", "1"] +
         [f"--split.{o[2:]}" if o.startswith("--") else o for o in sgd]),
        ("split, pipeline 4", ["--strategy", "split", "--model", "cnn:cut=pool1", "--split.epochs", "1",
                               "--split.pipeline", "4"] + [f"--split.{o[2:]}" if o.startswith("--") else o for o in sgd]),
    ]
    links = [(0.0, 0.0), (a.delay_ms / 1000, 0.0), (a.delay_ms / 1000, a.loss / 100)]
    rows = []
    for name, args in configs:
        for delay, loss in links:
            tag = f"{name.replace(', ', '-').replace(' ', '')}-{int(delay * 1000)}ms-{loss * 100:g}pct"
            print(f"running {name}: one-way delay {delay * 1000:.0f} ms, loss {loss * 100:g}% ...", flush=True)
            t0 = time.time()
            with TunLink(delay, loss, seed=1) as link:
                lines = run(fedra, os.path.join(out, tag), args, a.workers, a.limit, link, certs)
                dropped = sum(link.stats["dropped"])
                forwarded = sum(link.stats["forwarded"])
            last = lines[-1]
            rows.append((name, delay * 1000, loss * 100, last.get("test_accuracy"),
                         sum(l["fit_s"] for l in lines) / len(lines), last.get("step_ms"), last.get("rtt_ms"),
                         time.time() - t0, forwarded, dropped))
    print(f"\nFashion-MNIST ({a.limit} training images), CNN, {a.workers} workers, batch 32; coordinator and "
          f"workers in two network namespaces, {'plain TCP' if a.insecure else 'mutual TLS'}")
    print("| run | one-way delay | loss | test acc | fit s per round/epoch | step ms | rtt ms | wall s | packets | dropped |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, d, l, acc, fit, step, rtt, wall, fwd, drop in rows:
        f = lambda v, spec: format(v, spec) if v is not None else "-"
        print(f"| {name} | {d:.0f} ms | {l:g}% | {f(acc, '.4f')} | {fit:.2f} | {f(step, '.1f')} | {f(rtt, '.1f')} | "
              f"{wall:.1f} | {fwd + drop} | {drop} |")
    print(f"\nruns in {out}")


if __name__ == "__main__":
    main()
