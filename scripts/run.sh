#!/usr/bin/env bash
# README command 1: set up, build, and run the default experiment (FedAvg, 10 workers,
# Fashion-MNIST). Results: runs/fedavg-fmnist/{metrics.jsonl,summary.json,logs/}.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/build.sh fedra
# The default experiment starts afresh each time (a fresh run refuses a directory holding a
# checkpoint); `./scripts/run.sh --resume runs/fedavg-fmnist` continues an interrupted one instead.
if [[ " $* " != *" --resume "* ]] && [ -d runs/fedavg-fmnist ]; then
  echo "run.sh: replacing the previous run in runs/fedavg-fmnist"
  rm -rf runs/fedavg-fmnist
fi
exec ./build/fedra simulate --config experiments/fedavg-fmnist.cfg --out runs/fedavg-fmnist "$@"
