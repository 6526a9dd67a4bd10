"""What the benchmark scripts share: where the tree is, the two common arguments, and running a
peer script (PyTorch side) that prints its result as the last line of JSON."""
import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def arguments(**kwargs):
    """An ArgumentParser with --fedra (the binary) and --quick (a smoke run)."""
    ap = argparse.ArgumentParser(**kwargs)
    ap.add_argument("--fedra", default=os.path.join(ROOT, "build", "fedra"), help="the fedra binary")
    ap.add_argument("--quick", action="store_true", help="fewer steps (a smoke run, noisier)")
    return ap


def run_peer(script, args, what):
    """Runs benchmarks/peer/SCRIPT ARGS on one OpenMP thread; exits naming `what` if it fails."""
    run = subprocess.run([sys.executable, os.path.join(HERE, "peer", script)] + list(args),
                         capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    if run.returncode != 0:
        sys.exit(f"{what} failed:\n" + run.stderr)
    return json.loads(run.stdout.strip().splitlines()[-1])
