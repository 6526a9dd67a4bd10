#!/usr/bin/env bash
# Set up, build, and run the benchmark suite: every strategy on Fashion-MNIST with the same
# budget, IID and non-IID, plus the split-vs-federated crossover; writes results.csv, report.md
# and plots (docs/benchmarks.md, "The suite").
#   scripts/bench.sh                       quick profile (< 10 min on 2 cores)
#   scripts/bench.sh full                  the whole dataset
#   scripts/bench.sh compare fedavg split --dataset fmnist:limit=20000
# Any arguments go to benchmarks/suite.py (--help lists them).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/build.sh fedra
if [ $# -eq 0 ]; then set -- quick; fi
exec /usr/bin/python3 benchmarks/suite.py "$@"
