#!/usr/bin/python3
"""Four Python workers (examples/python/worker.py, each its own loop) and a C++ coordinator with
FedAdam on Fashion-MNIST, 5 rounds; prints each round's test accuracy and the final one.

    ./scripts/build.sh && PYTHONPATH=build/python /usr/bin/python3 examples/python/fedadam.py [--out DIR]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fedra", default=os.path.join(ROOT, "build/fedra"), help="the fedra program")
    ap.add_argument("--out", default=None, help="the run's directory (default: a temporary one)")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    out = a.out or tempfile.mkdtemp(prefix="fedra-fedadam-")
    os.makedirs(out, exist_ok=True)
    port_file = os.path.join(out, "port")
    coordinator = subprocess.Popen(
        [a.fedra, "coordinator", "--listen", "127.0.0.1:0", "--port-file", port_file, "--out", out,
         "--min-workers", str(a.workers), "--model", "mlp:784-200-10", "--test-data", "fmnist",
         "--fedavg.rounds", str(a.rounds), "--fedavg.server_opt", "adam", "--fedavg.server_lr", "0.03",
         "--threads", "1"])
    while not (os.path.exists(port_file) and open(port_file).read().strip()):
        if coordinator.poll() is not None:
            sys.exit("the coordinator did not start")
        time.sleep(0.05)
    address = "127.0.0.1:" + open(port_file).read().strip()
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "build/python") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    workers = [subprocess.Popen([sys.executable, os.path.join(HERE, "worker.py"), "--connect", address,
                                 "--client", f"{i}/{a.workers}"], env=env)
               for i in range(a.workers)]
    code = coordinator.wait()
    for w in workers:
        w.wait()
    lines = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    for l in lines:
        print(f"round {l['round']}: test_accuracy {l.get('test_accuracy', float('nan')):.4f}")
    print(f"final test accuracy {lines[-1]['test_accuracy']:.4f} ({a.workers} Python workers, FedAdam, "
          f"{a.rounds} rounds); outputs in {out}")
    sys.exit(code)


if __name__ == "__main__":
    main()
