#!/usr/bin/env bash
# Configures and builds Fedra into build/ (the CLI lands at build/fedra). Incremental; uses ccache
# when present. Usage: scripts/build.sh [TARGET...]   (default: everything; e.g. `fedra` alone)
set -euo pipefail
cd "$(dirname "$0")/.."
launcher=()
if command -v ccache >/dev/null; then
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
  # core/ and strategies/ precompile <torch/torch.h>; without this sloppiness ccache refuses every
  # call that uses the PCH ("Could not use precompiled header") and a fresh clone rebuilds all.
  export CCACHE_SLOPPINESS="${CCACHE_SLOPPINESS:-pch_defines,time_macros,include_file_mtime,include_file_ctime}"
  # Paths under the checkout become relative in ccache's hash, so another clone of the tree (CI's
  # fresh one) hits the cache too.
  export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$(pwd)}"
fi
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "${launcher[@]}" >/dev/null
targets=()
for t in "$@"; do targets+=(--target "$t"); done
cmake --build build -j "$(nproc)" "${targets[@]}"
