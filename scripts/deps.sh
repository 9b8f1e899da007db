#!/usr/bin/env bash
# Install whatever choreo needs from Debian 12 that is missing. Idempotent.
# Runs as root directly, or through sudo otherwise.
set -euo pipefail

pkgs=(
  build-essential cmake pkg-config
  libgrpc-dev protobuf-compiler protobuf-c-compiler libprotobuf-c-dev
  nanopb libnanopb-dev
  libnats-dev nats-server
  libcunit1-dev grpc-proto
  clang-format git
  python3 python3-grpcio python3-protobuf python3-jsonschema python3-yaml
)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
    || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "deps: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi

echo "deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
