#!/usr/bin/env bash
# Makes a Debian 12 base image in podman's local store (localhost/debian:12) from Debian's archive
# with debootstrap, for machines that reach Debian's mirror but no container registry. The
# Dockerfile then builds with:  podman build --build-arg BASE=localhost/debian:12 -t fedra .
#   tests/deploy/base_image.sh [MIRROR]      (root; apt-get install debootstrap podman)
set -euo pipefail
mirror=${1:-http://deb.debian.org/debian}
if podman image exists localhost/debian:12; then echo "localhost/debian:12 is already there"; exit 0; fi
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase bookworm "$root" "$mirror"
# As Docker's debian images: no cached package lists, the same sources for apt-get update.
printf 'deb %s bookworm main\ndeb %s bookworm-updates main\n' "$mirror" "$mirror" > "$root/etc/apt/sources.list"
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
tar -C "$root" -c . | podman import --change 'CMD ["bash"]' - localhost/debian:12
echo "made localhost/debian:12"
