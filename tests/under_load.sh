#!/usr/bin/env bash
# Runs the process-level tests with two busy loops per core beside them, RUNS times in a row, and
# stops at the first failure. This is how to check that a test waits for the events it needs
# (a log line, a metrics line, a file) rather than for a guessed time: on a loaded machine a
# process takes seconds to start and a round takes several times longer than on an idle one.
#
#   tests/under_load.sh [RUNS] [CTEST_REGEX]     (defaults: 3, every *integration_test)
#
# Needs a build (./scripts/build.sh). Each busy loop is a shell spinning at 100%; they are killed
# when the script ends, however it ends. Expect each run to take 2-4x as long as on an idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-3}"
regex="${2:-integration_test}"
[[ -d build ]] || { echo "no build/ here: run ./scripts/build.sh first" >&2; exit 2; }
loops=()
stop_loops() { [[ ${#loops[@]} -eq 0 ]] || kill "${loops[@]}" 2>/dev/null || true; }
trap stop_loops EXIT
for _ in $(seq $((2 * $(nproc)))); do
  bash -c 'while :; do :; done' &
  loops+=($!)
done
echo "under_load: ${#loops[@]} busy loops on $(nproc) cores; ctest -R '$regex', $runs run(s)"
for i in $(seq "$runs"); do
  start=$(date +%s)
  if ! (cd build && ctest --output-on-failure -R "$regex"); then
    echo "under_load: run $i of $runs FAILED after $(( $(date +%s) - start )) s" >&2
    exit 1
  fi
  echo "under_load: run $i of $runs passed in $(( $(date +%s) - start )) s (load average $(cut -d' ' -f1-3 /proc/loadavg))"
done
