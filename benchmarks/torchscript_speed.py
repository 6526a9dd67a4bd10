#!/usr/bin/python3
"""Does a user's TorchScript model train as fast as the same network from a built-in spec?

The 2NN (mlp:784-200-200-10) and McMahan et al.'s CNN (cnn), each defined in Python with the
same layers, scripted with torch.jit.script (what a user brings: --model torchscript:PATH), and
trained by `fedra train` on the same Fashion-MNIST examples against the spec-built network, in one
run: alternating spec / script, --repeats times each, one thread, batch 32. The figure is the
median step time (metrics.jsonl step_ms); the ratio is script / spec (issue 18's target: <= 1.15).

  benchmarks/torchscript_speed.py [--fedra build/fedra] [--quick] [--repeats 5] [--json OUT]
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402

MAKE = r'''
import sys, torch, torch.nn as nn
kind, path = sys.argv[1], sys.argv[2]
if kind == "2nn":
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, 10))
else:
    net = nn.Sequential(nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(7 * 7 * 64, 512), nn.ReLU(), nn.Linear(512, 10))
torch.jit.script(net).save(path)
'''


def step_ms(fedra, model, examples, out):
    run = subprocess.run([fedra, "train", "--model", model, "--dataset", f"fmnist:limit={examples},test_limit=100",
                          "--epochs", "1", "--batch-size", "32", "--threads", "1", "--out", out],
                         capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"fedra train --model {model} failed:\n{run.stderr[-2000:]}")
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return json.loads(f.readline())["step_ms"]


def main():
    ap = benchlib.arguments(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", help="write the figures here")
    a = ap.parse_args()
    repeats = 2 if a.quick else a.repeats
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec, examples in (("2NN", "mlp:784-200-200-10", 6400), ("CNN", "cnn", 1600)):
            if a.quick:
                examples //= 4
            script = os.path.join(tmp, name + ".pt")
            subprocess.run(["/usr/bin/python3", "-c", MAKE, name.lower(), script], check=True)
            times = {"spec": [], "script": []}
            for r in range(repeats):
                for kind, model in (("spec", spec), ("script", "torchscript:" + script)):
                    times[kind].append(step_ms(a.fedra, model, examples, os.path.join(tmp, f"{name}-{kind}-{r}")))
            spec_ms, script_ms = statistics.median(times["spec"]), statistics.median(times["script"])
            results[name] = {"spec": spec, "examples": examples, "repeats": repeats, "spec_step_ms": spec_ms,
                             "script_step_ms": script_ms, "ratio": script_ms / spec_ms,
                             "spec_all": times["spec"], "script_all": times["script"]}
            print(f"{name:4s} ({spec}): spec {spec_ms:.3f} ms/step, TorchScript {script_ms:.3f} ms/step, "
                  f"ratio {script_ms / spec_ms:.3f} (target <= 1.15; median of {repeats}, batch 32, 1 thread)",
                  flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
