#!/usr/bin/env bash
# README command 2: set up, build, and run the whole test suite (unit + integration).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/build.sh
cd build
# One test per core at a time: the tests wait for events, not for time, so they hold on a loaded
# machine (tests/under_load.sh checks that with two busy loops per core), and the suite takes about
# half as long on 2 cores as one at a time.
ctest --output-on-failure -j "$(nproc)" "$@"
