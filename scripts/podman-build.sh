#!/usr/bin/env bash
# Builds the choreo image without a Docker engine, with podman in chroot
# isolation, on a Debian 12 base made locally with debootstrap. For machines
# where `docker build` is unavailable; CI does not run it.
#
#   scripts/podman-build.sh [TAG]        (default tag: choreo:dev)
#
# Needs root (or sudo) for debootstrap, plus podman, buildah and debootstrap
# (apt-get install podman buildah debootstrap). `podman run` may fail on such
# machines (setrlimit not permitted); the script checks the image with
# `buildah run --isolation=chroot` instead.
set -euo pipefail

tag=${1:-choreo:dev}
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${CHOREO_PODMAN_WORK:-$repo/.run/podman}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

for tool in podman buildah debootstrap; do
  command -v "$tool" >/dev/null || { echo "podman-build: $tool not installed" >&2; exit 1; }
done
sudo=""
[ "$(id -u)" -eq 0 ] || sudo=sudo

# Base images: the Dockerfile's FROM names, made from a minbase root
# filesystem so that --pull=never finds them. The same rootfs serves both the
# build stage (debian:bookworm) and the runtime stage (debian:bookworm-slim).
if ! podman image exists docker.io/library/debian:bookworm-slim; then
  rootfs=$work/rootfs
  if [ ! -x "$rootfs/bin/sh" ]; then
    $sudo rm -rf "$rootfs"
    mkdir -p "$work"
    $sudo debootstrap --variant=minbase bookworm "$rootfs" "$mirror"
  fi
  # debootstrap leaves its .deb files and the apt lists behind (about 80 MB);
  # the official images have neither, and both stages run apt-get update.
  $sudo tar -C "$rootfs" --exclude='./var/cache/apt/archives/*.deb' \
    --exclude='./var/lib/apt/lists/*' -c . |
    podman import - docker.io/library/debian:bookworm-slim
  podman tag docker.io/library/debian:bookworm-slim docker.io/library/debian:bookworm
fi

podman build --isolation=chroot --network=host --pull=never \
  -f "$repo/Dockerfile" -t "$tag" "$repo"

# Check the image: every service binary finds its libraries and accepts its
# default configuration, as the user the manifests run it as.
ctr=$(buildah from --pull-never "$tag")
trap 'buildah rm "$ctr" >/dev/null' EXIT
for s in orders inventory payment notifications; do
  buildah run --isolation=chroot --user 10001:10001 "$ctr" -- "/usr/local/bin/choreo-$s" --check-config
done
echo "podman-build: built and checked $tag"
