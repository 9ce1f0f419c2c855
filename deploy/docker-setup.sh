#!/usr/bin/env bash
# Prepare Docker for the e2e tests on a fresh Debian machine (CI): the engine (docker.io +
# docker-compose from Debian, started in the background if not running), a local base image
# (no registry needed), the wheelhouse and the fedonco-bench image. Idempotent; every wait bounded.
# `--base-only`: only the engine and the base image (downloads and unpacking, no .venv needed), so
# that CI can prepare them while the test suite runs (.ci/run); the rest on the next call.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE_IMAGE="${FEDONCO_BASE_IMAGE:-fedonco-base:bookworm}"

if ! command -v dockerd >/dev/null || ! { command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1; }; then
    echo "installing docker.io and docker-compose from Debian"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io docker-compose debootstrap >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
    echo "starting dockerd"
    (dockerd >/tmp/dockerd.log 2>&1 &)
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { tail -20 /tmp/dockerd.log; exit 1; }
fi
deploy/base-image.sh "$BASE_IMAGE"
if [ "${1:-}" = "--base-only" ]; then
    echo "docker engine and base image $BASE_IMAGE ready"
    exit 0
fi
make wheelhouse
if command -v docker-compose >/dev/null; then COMPOSE=(docker-compose); else COMPOSE=(docker compose); fi
FEDONCO_BASE_IMAGE="$BASE_IMAGE" "${COMPOSE[@]}" build server
echo "docker ready: image fedonco-bench:latest on base $BASE_IMAGE"
