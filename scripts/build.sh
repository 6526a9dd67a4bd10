#!/usr/bin/env bash
# Configures and builds Fedra into build/ (the CLI lands at build/fedra). Incremental; uses ccache
# when present. Usage: scripts/build.sh [TARGET...]   (default: everything; e.g. `fedra` alone)
set -euo pipefail
cd "$(dirname "$0")/.."
launcher=()
if command -v ccache >/dev/null; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "${launcher[@]}" >/dev/null
targets=()
for t in "$@"; do targets+=(--target "$t"); done
cmake --build build -j "$(nproc)" "${targets[@]}"
