#!/usr/bin/env bash
# Installs every Debian package Fedra needs to build, test, run and benchmark.
# Idempotent: apt-get skips what is already installed. Runs as root or through sudo.
set -euo pipefail

packages=(
  # toolchain
  build-essential cmake pkg-config ccache git ca-certificates
  # libraries
  libtorch-dev libopenblas0-openmp
  libcapnp-dev capnproto
  libasio-dev libboost-program-options-dev
  libfmt-dev libspdlog-dev nlohmann-json3-dev zlib1g-dev
  libssl-dev
  doctest-dev libbenchmark-dev
  # data: Fashion-MNIST as gzip IDX files under /usr/share/datasets/fashion-mnist
  dataset-fashion-mnist
  # reference values and peer baselines in benchmarks (Debian's PyTorch), and the `fedra` Python
  # package (python/): built with pybind11 against that PyTorch, tested with pytest
  python3 python3-torch python3-dev pybind11-dev python3-pytest
  # the package as a wheel in a virtual environment (pip install --no-build-isolation build/python)
  python3-pip python3-setuptools python3-wheel python3-venv
  # network namespaces for benchmarks/slow_network.py (ip netns)
  iproute2
  # the frame fuzzer (tests/fuzz): clang with libFuzzer and the sanitizers
  clang libclang-rt-14-dev
  # the benchmark suite's plots (PNG via cairo, SVG) and a font to label them with
  gnuplot-nox fonts-dejavu-core
  # deployment tests (tests/deploy): a single-node Slurm cluster, the Kubernetes API's models for
  # the manifests' schema check, unshare/nsenter for the multi-host namespaces
  munge slurmctld slurmd slurm-client python3-kubernetes python3-yaml util-linux
)

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${#missing[@]} Debian packages: ${missing[*]}"
  # munge's post-install script makes /etc/munge/munge.key by switching to the munge user with su,
  # which fails where su cannot start a shell (some chroots and containers), and then the slurm
  # packages stay unconfigured. With a key already there it only sets its owner.
  if [ ! -e /etc/munge/munge.key ]; then
    $sudo sh -c 'umask 077 && mkdir -p /etc/munge && head -c 1024 /dev/urandom > /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key'
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update
  $sudo apt-get install -y --no-install-recommends "${packages[@]}"
else
  echo "setup: all ${#packages[@]} Debian packages present"
fi
