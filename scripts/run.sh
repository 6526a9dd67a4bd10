#!/usr/bin/env bash
# README command 1: set up, build, and run the default experiment (FedAvg, 10 workers,
# Fashion-MNIST). Results: runs/fedavg-fmnist/{metrics.jsonl,summary.json,logs/}.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/build.sh fedra
exec ./build/fedra simulate --config experiments/fedavg-fmnist.cfg --out runs/fedavg-fmnist "$@"
