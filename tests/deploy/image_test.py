#!/usr/bin/python3
"""The Dockerfile: checked as text always, built with podman or buildah where the machine allows.

Checks: two stages (build, runtime); the runtime stage installs no compiler and no -dev package,
runs as a non-root user, copies only the binary from the build stage; every shared library the
fedra binary links directly comes from a package the runtime stage installs (or one every Debian
base image has). Then, with --build and podman or buildah present and able to build: builds the
image (from a local Debian 12 base: BASE=... or debian:12 already in the store) and runs
`fedra version` and `fedra strategies` in it as its non-root user.

Exits 77 (skipped) only for the build, with the reason, when it cannot build here.

usage: image_test.py FEDRA_BINARY SOURCE_DIR [--build]"""
import os
import re
import shutil
import subprocess
import sys
import time

from deploylib import Checks

FEDRA = os.path.abspath(sys.argv[1])
SOURCE = os.path.abspath(sys.argv[2])
BUILD = "--build" in sys.argv[3:] or os.environ.get("FEDRA_IMAGE_BUILD") == "1"
# In every Debian base image: apt itself needs them.
BASE_PACKAGES = {"libc6", "libstdc++6", "libgcc-s1", "zlib1g"}
check = Checks()


def stages(text):
    """[(FROM line, [instruction lines])] with continuation lines joined."""
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            out.append((line, []))
        elif out:
            out[-1][1].append(line)
    return out


def installed(instructions):
    pkgs = set()
    for line in instructions:
        for m in re.finditer(r"apt-get install ([^&;]*)", line):
            pkgs |= {w for w in m.group(1).split() if not w.startswith("-")}
    return pkgs


def needed_packages():
    """Debian packages holding the libraries `fedra` links directly (its DT_NEEDED entries)."""
    out = subprocess.run(["objdump", "-p", FEDRA], stdout=subprocess.PIPE, text=True, check=True).stdout
    libs = re.findall(r"NEEDED\s+(\S+)", out)
    pkgs = {}
    for lib in libs:
        r = subprocess.run(["dpkg", "-S", f"*/{lib}"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        names = {line.split(":")[0] for line in r.stdout.splitlines() if ":" in line}
        pkgs[lib] = sorted(names)
    return pkgs


def static_checks():
    text = open(os.path.join(SOURCE, "Dockerfile")).read()
    st = stages(text)
    check(len(st) == 2, f"two stages (build, runtime): {[s[0] for s in st]}")
    if len(st) != 2:
        return
    build, runtime = st
    check(" AS build" in build[0], "the first stage is named build")
    runtime_pkgs = installed(runtime[1])
    dev = sorted(p for p in runtime_pkgs if p.endswith("-dev") or p in ("build-essential", "cmake", "g++", "gcc", "capnproto"))
    check(not dev, f"the runtime stage installs no compiler or -dev package {dev}")
    users = [l.split()[1] for l in runtime[1] if l.upper().startswith("USER ")]
    check(any("cmake --install build --prefix /opt/fedra" in l for l in build[1]),
          "the build stage installs fedra's tree (binary with RUNPATH $ORIGIN/../lib, libraries) to /opt/fedra")
    check(bool(users) and users[-1].split(":")[0] not in ("0", "root"), f"the runtime stage runs as a non-root user {users}")
    copies = [l for l in runtime[1] if l.upper().startswith("COPY")]
    check(bool(copies) and all("--from=build" in c and "/opt/fedra/" in c and "include" not in c for c in copies),
          f"the runtime stage copies only the installed binary and libraries from the build stage {copies}")
    copied = " ".join(copies)
    check(any("rm -rf /var/lib/apt/lists" in l for l in runtime[1]), "apt's lists are removed from the final image")
    check("libtorch-dev" in installed(build[1]), "the build stage installs the build dependencies (libtorch-dev ...)")
    for lib, pkgs in sorted(needed_packages().items()):
        ok = any(p in runtime_pkgs or p in BASE_PACKAGES for p in pkgs) or (
            not pkgs and lib.startswith("libfedra_") and "lib/libfedra_*.so" in copied)
        check(ok, f"{lib} (from {', '.join(pkgs) or 'no package'}) is in the runtime image")
    ignore = open(os.path.join(SOURCE, ".dockerignore")).read().split()
    check("build/" in ignore and ".git/" in ignore, ".dockerignore keeps build/ and .git/ out of the context")


def build_image():
    # buildah with chroot isolation builds where an OCI runtime cannot start containers (hybrid
    # cgroups, no room to raise rlimits: this machine); podman build otherwise.
    tool = shutil.which("buildah") or shutil.which("podman")
    if tool is None:
        print("skipped (build): neither buildah nor podman is installed (apt-get install buildah)")
        return 77
    buildah = tool.endswith("buildah")
    base = os.environ.get("BASE", "")
    if not base:
        for candidate in ("docker.io/library/debian:12", "localhost/debian:12"):
            probe = [tool, "inspect", "--type", "image", candidate] if buildah else [tool, "image", "exists", candidate]
            if subprocess.run(probe, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0:
                base = candidate
                break
    if not base:
        print("skipped (build): no Debian 12 base image in the local store and no registry to pull one from; make one "
              "with tests/deploy/base_image.sh (debootstrap + podman import) or set BASE")
        return 77
    isolation = ["--isolation", "chroot"] if buildah else []
    cmd = [tool, "bud" if buildah else "build", *isolation, "--network", "host", "--build-arg", f"BASE={base}", "-t",
           "fedra:test", SOURCE]
    start = time.monotonic()
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        tail = r.stdout.strip().splitlines()[-5:]
        check(False, f"{' '.join(cmd[:2])}: {' | '.join(tail)}")
        return 1
    check(True, f"{os.path.basename(tool)} built fedra:test from {base} in {time.monotonic() - start:.0f} s")

    def run_in_image(*args):
        if buildah:
            c = subprocess.run(["buildah", "from", "fedra:test"], stdout=subprocess.PIPE, text=True, check=True).stdout.strip()
            try:
                return subprocess.run(["buildah", "run", "--isolation", "chroot", c, "--", *args], stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True)
            finally:
                subprocess.run(["buildah", "rm", c], stdout=subprocess.DEVNULL)
        return subprocess.run(["podman", "run", "--rm", "--network", "none", "--entrypoint", args[0], "fedra:test",
                               *args[1:]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    for args, want in ((["fedra", "version"], "wire protocol"), (["fedra", "strategies"], "fedavg")):
        r = run_in_image(*args)
        check(r.returncode == 0 and want in r.stdout, f"{' '.join(args)} in the image: {r.stdout.strip()[:80]!r}")
    r = run_in_image("id", "-u")
    check(r.stdout.strip() == "10001", f"the image runs as uid 10001 (id -u: {r.stdout.strip()})")
    r = run_in_image("sh", "-c", "ls /usr/include /usr/bin | grep -c -E '^(torch|c\\+\\+|g\\+\\+|cmake)$' || true")
    check(r.stdout.strip() == "0", f"no compiler, cmake or torch headers in the image ({r.stdout.strip()})")
    r = run_in_image("fedra", "train", "--dataset", "fmnist:limit=500", "--model", "mlp:784-32-10", "--epochs", "1",
                     "--out", "/tmp/train")
    check(r.returncode == 0 and "test_accuracy" in r.stdout,
          f"fedra train on the image's Fashion-MNIST as uid 10001: {r.stdout.strip().splitlines()[-1][:120] if r.stdout.strip() else ''}")
    return 0


def main():
    static_checks()
    if not BUILD:
        print("     (the image build runs with --build or FEDRA_IMAGE_BUILD=1: a from-scratch build, ~10 min)")
    code = build_image() if BUILD else 0
    return check.result(SOURCE) or code


if __name__ == "__main__":
    sys.exit(main())
