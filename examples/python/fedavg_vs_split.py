#!/usr/bin/python3
"""FedAvg against split learning on the same data, from one script, with a plot.

    PYTHONPATH=build/python /usr/bin/python3 examples/python/fedavg_vs_split.py [--out DIR] [--rounds 5]

Both runs: 4 C++ workers with IID parts of Fashion-MNIST (split learning runs Fedra's own worker
half: the bottom of the network stays on the worker), MLP 784-200-10, one pass over the data per
round, SGD with lr 0.02 (momentum 0.9 for FedAvg, the default; split's default is none). FedAvg sends the whole model each way each round; split learning sends the cut layer's
activations and gradients for every batch. The plot (gnuplot, DIR/fedavg_vs_split.png) shows test
accuracy against the bytes each run put on the wire, the figure that decides between them.
"""
import argparse
import os
import shutil
import subprocess
import tempfile

import fedra


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="where the runs and the plot go (default: a temporary directory)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dataset", default="fmnist")
    a = ap.parse_args()
    out = a.out or tempfile.mkdtemp(prefix="fedra-fedavg-vs-split-")
    common = dict(workers=0, cpp_workers=4, dataset=a.dataset, progress=True)
    runs = {
        "fedavg": fedra.simulate(model="mlp:784-200-10", rounds=a.rounds, out=os.path.join(out, "fedavg"),
                                 options={"fedavg.local_epochs": 1, "fedavg.lr": 0.02}, **common),
        "split": fedra.simulate(model="mlp:784-200-10,cut=relu1", strategy="split", out=os.path.join(out, "split"),
                                options={"split.epochs": a.rounds, "split.lr": 0.02}, **common),
    }
    for name, lines in runs.items():
        if hasattr(lines, "to_dict"):
            runs[name] = lines = lines.to_dict("records")
        with open(os.path.join(out, name + ".dat"), "w") as f:
            for line in lines:
                mb = (line["bytes_up"] + line["bytes_down"]) / 1e6
                f.write(f"{line['round']} {mb:.3f} {line['test_accuracy']:.4f}\n")
        last = lines[-1]
        print(f"{name:6s}: test accuracy {last['test_accuracy']:.4f} after {last['round']} rounds, "
              f"{(last['bytes_up'] + last['bytes_down']) / 1e6:.1f} MB on the wire")
    if shutil.which("gnuplot"):
        png = os.path.join(out, "fedavg_vs_split.png")
        script = (f"set terminal pngcairo size 800,500; set output '{png}'; set logscale x; "
                  "set xlabel 'MB on the wire (up + down, cumulative)'; set ylabel 'test accuracy'; set key bottom right; "
                  f"plot '{out}/fedavg.dat' using 2:3 with linespoints title 'FedAvg', "
                  f"'{out}/split.dat' using 2:3 with linespoints title 'split learning'")
        subprocess.run(["gnuplot", "-e", script], check=True)
        print("plot:", png)
    else:
        print("gnuplot is not installed: the figures are in", out)


if __name__ == "__main__":
    main()
