#!/usr/bin/env bash
# Build a local Python 3.11 base image without any container registry: debootstrap a minimal
# Debian bookworm root filesystem (python3, venv, pip, CA certificates) and `docker import` it.
# Usage: deploy/base-image.sh [IMAGE]   (default fedonco-base:bookworm; skipped if it exists)
# Needs root, debootstrap and a reachable Debian mirror (DEBIAN_MIRROR).
set -euo pipefail
IMAGE="${1:-fedonco-base:bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "base image $IMAGE exists; reusing it"
    exit 0
fi
command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap; }
ROOTFS="$(mktemp -d /tmp/fedonco-rootfs.XXXXXX)"
trap 'rm -rf "$ROOTFS"' EXIT
echo "debootstrap bookworm into $ROOTFS (about a minute)"
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$ROOTFS" "$MIRROR" >/tmp/fedonco-debootstrap.log 2>&1 \
    || { tail -20 /tmp/fedonco-debootstrap.log; exit 1; }
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
tar -C "$ROOTFS" -c . | docker import -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' - "$IMAGE"
echo "base image $IMAGE ready"
