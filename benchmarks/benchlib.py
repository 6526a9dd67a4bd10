"""What the benchmark scripts share: where the tree is, the two common arguments, and running a
peer script (PyTorch side) that prints its result as the last line of JSON."""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def same_blas_kernels():
    """Fedra re-executes itself with OPENBLAS_CORETYPE=SkylakeX (Haswell) when Debian's OpenBLAS
    does not recognise the CPU and falls back to its slow Prescott kernels (core/system/process.h). The
    PyTorch peers load the same OpenBLAS: they get the same setting here, so that both sides of
    every comparison run the same matmul kernels."""
    if "OPENBLAS_CORETYPE" in os.environ or "FEDRA_KEEP_BLAS" in os.environ:
        return
    try:
        import ctypes
        core = ctypes.CDLL("libopenblas.so.0")
        core.openblas_get_corename.restype = ctypes.c_char_p
        name = core.openblas_get_corename().decode().lower()
        flags = open("/proc/cpuinfo").read()
    except (OSError, AttributeError):
        return
    if name == "prescott":
        fix = "SkylakeX" if " avx512f" in flags else "Haswell" if " avx2" in flags else None
        if fix:
            os.environ["OPENBLAS_CORETYPE"] = fix


same_blas_kernels()


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


def experiment(default_rounds, prefix, **extra):
    """Arguments of a script that reruns the default experiment: --rounds, --out, --quick, and
    --NAME for each extra NAME=(default, help). Returns (args, rounds: 3 with --quick, the output
    directory)."""
    ap = arguments()
    ap.add_argument("--rounds", type=int, default=default_rounds)
    ap.add_argument("--out", help="keep the runs here")
    for name, (default, text) in extra.items():
        ap.add_argument("--" + name, type=type(default), default=default, help=text)
    a = ap.parse_args()
    out = a.out or tempfile.mkdtemp(prefix=prefix)
    os.makedirs(out, exist_ok=True)
    return a, (3 if a.quick else a.rounds), out


def simulate_default(binary, out, rounds, quick, extra, may_fail=False):
    """`fedra simulate` with experiments/fedavg-fmnist.cfg, `rounds` rounds and `extra`; with
    `quick` on 12,000 images. Returns (summary.json, metrics.jsonl lines, wall seconds). With
    `may_fail`, a job that failed (e.g. its model diverged and its last round failed) is returned
    like any other; its summary says failed."""
    cmd = [binary, "simulate", "--config", os.path.join(ROOT, "experiments", "fedavg-fmnist.cfg"),
           "--fedavg.rounds", str(rounds), "--log-level", "warn", "--out", out] + list(extra)
    if quick:
        cmd += ["--dataset", "fmnist:limit=12000"]
    shutil.rmtree(out, ignore_errors=True)  # a rerun replaces it (fedra refuses to overwrite a checkpoint)
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - t0
    if r.returncode != 0 and not (may_fail and os.path.exists(os.path.join(out, "summary.json"))):
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr}")
    summary = json.load(open(os.path.join(out, "summary.json")))
    lines = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    return summary, lines, wall
