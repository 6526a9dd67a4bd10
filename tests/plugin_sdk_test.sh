#!/bin/bash
# Follows docs/plugins.md literally: runs the block between <!-- sdk-steps --> markers, then
# checks that the plugin built against the installed SDK was listed and trained.
# Usage: plugin_sdk_test.sh SOURCE_DIR BUILD_DIR
set -euo pipefail
src=$1
export FEDRA_BUILD=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export PREFIX=$tmp/prefix PLUGIN_BUILD=$tmp/plugin-build OUT=$tmp/out
steps=$(sed -n '/<!-- sdk-steps -->/,/<!-- \/sdk-steps -->/p' "$src/docs/plugins.md" | sed '/^<!--/d; /^```/d')
[ -n "$steps" ] || { echo "FAIL: no sdk-steps block in docs/plugins.md"; exit 1; }
cd "$src"
bash -euo pipefail -c "$steps" > "$tmp/steps.log" 2>&1 || { cat "$tmp/steps.log"; echo "FAIL: the documented steps failed"; exit 1; }
grep -q '^fedmedian ' "$tmp/steps.log" || { cat "$tmp/steps.log"; echo "FAIL: fedra strategies did not list fedmedian"; exit 1; }
[ -f "$PREFIX/include/fedra/plugin.h" ] || { echo "FAIL: public header not installed"; exit 1; }
[ ! -e "$PREFIX/include/fedra/core/runtime/worker.h" ] || { echo "FAIL: an internal header was installed"; exit 1; }
accuracy() {  # final test accuracy of a run directory, after checking it has 3 rounds
  local lines
  lines=$(wc -l < "$1/metrics.jsonl")
  [ "$lines" -eq 3 ] || { echo "FAIL: expected 3 rounds in $1/metrics.jsonl, got $lines" >&2; exit 1; }
  tail -1 "$1/metrics.jsonl" | grep -o '"test_accuracy":[0-9.e-]*' | cut -d: -f2
}
clean=$(accuracy "$OUT/clean")
median=$(accuracy "$OUT/poisoned-median")
mean=$(accuracy "$OUT/poisoned-mean")
fedavgm=$(accuracy "$OUT/fedavgm")
awk -v a="$clean" 'BEGIN { exit !(a > 0.7) }' || { echo "FAIL: clean fedmedian test accuracy $clean"; exit 1; }
awk -v a="$median" 'BEGIN { exit !(a > 0.7) }' || { echo "FAIL: poisoned, median: test accuracy $median"; exit 1; }
awk -v a="$mean" 'BEGIN { exit !(a < 0.4) }' || { echo "FAIL: poisoned, mean: test accuracy $mean (expected wrecked)"; exit 1; }
awk -v a="$fedavgm" 'BEGIN { exit !(a > 0.7) }' || { echo "FAIL: fedavgm test accuracy $fedavgm"; exit 1; }
echo "PASS: plugins built against the installed SDK and listed; test accuracy after 3 rounds: clean $clean," \
     "worker-3 poisoned: median $median, FedAvg's mean $mean; fedavgm $fedavgm"
