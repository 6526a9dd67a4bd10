#!/usr/bin/env bash
# Builds the frame fuzzer with clang/libFuzzer and runs it for a bounded time from valid seed
# frames. Exit 0: no crash, leak, sanitizer report or hang in SECONDS of fuzzing; otherwise the
# crashing input is kept in the work directory and its path printed.
#   tests/fuzz/run.sh [SECONDS=60] [WORKDIR=build-fuzz]
set -euo pipefail
src=$(cd "$(dirname "$0")" && pwd)
seconds=${1:-60}
work=$(realpath -m "${2:-$src/../../build-fuzz}")
cmake -S "$src" -B "$work" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=clang \
  -DCMAKE_CXX_COMPILER=clang++ >/dev/null
cmake --build "$work" -j "$(nproc)" >/dev/null
mkdir -p "$work/corpus" "$work/artifacts"
rm -rf "$work/seeds" && mkdir -p "$work/seeds"
"$work/make_seeds" "$work/seeds"
cp "$work/seeds"/* "$work/corpus/"
# The harness must accept valid frames, or it fuzzes nothing but the first check.
decoded=$(FEDRA_FUZZ_SELFTEST=1 "$work/frame_fuzz" -runs=0 "$work/seeds" 2>&1 | grep -c "^frame_fuzz: decoded" || true)
if [ "$decoded" -ne "$(ls "$work/seeds" | wc -l)" ]; then
  echo "FAIL: only $decoded of the seed frames decode in the harness"
  exit 1
fi
echo "fuzzing frame decoding and validation for ${seconds} s ..."
status=0
"$work/frame_fuzz" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
  -print_final_stats=1 -artifact_prefix="$work/artifacts/" "$work/corpus" > "$work/fuzz.log" 2>&1 || status=$?
grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb|Done [0-9]+ runs" "$work/fuzz.log" || true
if [ "$status" -ne 0 ]; then
  tail -40 "$work/fuzz.log"
  echo "FAIL: the fuzzer found a problem (exit $status); inputs in $work/artifacts/"
  exit 1
fi
echo "PASS: $(grep -oE 'Done [0-9]+ runs' "$work/fuzz.log" | grep -oE '[0-9]+') inputs in ${seconds} s, no crash; corpus $(ls "$work/corpus" | wc -l) files"
