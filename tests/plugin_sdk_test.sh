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
[ -f "$PREFIX/include/fedra/core/plugin.h" ] || { echo "FAIL: public header not installed"; exit 1; }
[ ! -e "$PREFIX/include/fedra/core/worker.h" ] || { echo "FAIL: an internal header was installed"; exit 1; }
lines=$(wc -l < "$OUT/metrics.jsonl")
[ "$lines" -eq 3 ] || { echo "FAIL: expected 3 rounds in metrics.jsonl, got $lines"; exit 1; }
acc=$(tail -1 "$OUT/metrics.jsonl" | grep -o '"test_accuracy":[0-9.]*' | cut -d: -f2)
awk -v a="$acc" 'BEGIN { exit !(a > 0.6) }' || { echo "FAIL: test accuracy $acc"; exit 1; }
echo "PASS: plugin built against the installed SDK, listed, trained 3 rounds (test accuracy $acc)"
