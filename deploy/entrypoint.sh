#!/bin/sh
# FedOnco-Bench container entry point: turns deployment settings (environment) into the command
# of one role. Roles: server | site | release | judge | certs | health | fedonco ARGS... | help.
#
# Settings (all optional unless marked):
#   FEDONCO_PROFILE   smoke | quick | paper            (default quick)
#   FEDONCO_CONFIG    a TOML profile file              (default /app/configs/$FEDONCO_PROFILE.toml)
#   FEDONCO_METHODS   comma-separated methods          (default: the profile's fl.methods)
#   FEDONCO_ROUNDS    override train.rounds            (default: the profile's)
#   FEDONCO_RUN_ID    campaign directory under /runs   (default compose-$FEDONCO_PROFILE)
#   FEDONCO_SITE      site: its ID, A-E                (required for `site`)
#   FEDONCO_SERVER    site: server host:port           (default server:50051)
#   FEDONCO_DATA      site: a dataset directory; if it holds no manifest.json, this site's own
#                     slices are imported (FEDONCO_IMPORT) or generated there (default /data)
#   FEDONCO_IMPORT    site: the hospital's real CT (NIfTI or DICOM, mounted read-only): imported
#                     into FEDONCO_DATA as this site's cases (`fedonco data import --site`)
#   FEDONCO_IMPORT_ARGS  site: more `fedonco data import` options, e.g. "--layout msd
#                     --tumor-label 2" (word-split)
#   FEDONCO_TLS_DIR   mutual TLS directory (ca.crt, tls.crt, tls.key) from `fedonco certs`
#   FEDONCO_INSECURE  1 = allow plaintext gRPC beyond loopback (closed test networks only)
#   FEDONCO_PUBLISH_DIR  site: where a FedBN site publishes its released model
#   FEDONCO_HOLD_FOR_AUDIT  server: 1 = after the last run, wait for the judge (compose)
set -eu

role="${1:-help}"
[ "$#" -gt 0 ] && shift
PROFILE="${FEDONCO_PROFILE:-quick}"
CONFIG="${FEDONCO_CONFIG:-/app/configs/$PROFILE.toml}"
RUN_ID="${FEDONCO_RUN_ID:-compose-$PROFILE}"
RUN_DIR="/runs/$RUN_ID"
DONE="$RUN_DIR/audit.done"

methods() {
    if [ -n "${FEDONCO_METHODS:-}" ]; then echo "$FEDONCO_METHODS"; return; fi
    python -c "import sys; from common.config import load_config; print(','.join(load_config(sys.argv[1]).fl.methods))" "$CONFIG"
}

case "$role" in
server)
    if [ -e "$RUN_DIR" ]; then
        old="$RUN_DIR.$(date -u +%Y%m%dT%H%M%SZ)"
        echo "entrypoint: $RUN_DIR exists (an earlier campaign); moving it to $old" >&2
        mv "$RUN_DIR" "$old"
    fi
    fedonco data --config "$CONFIG" --splits test --out /data/server --force --no-gallery
    set -- --config "$CONFIG" --methods "$(methods)" --data /data/server --run-dir "$RUN_DIR" \
        --address 0.0.0.0:50051 "$@"
    # compose: keep the federation open until the judge's audit is over (see fedonco judge)
    [ "${FEDONCO_HOLD_FOR_AUDIT:-0}" = 1 ] && set -- "$@" --hold-until "$DONE"
    [ -n "${FEDONCO_ROUNDS:-}" ] && set -- "$@" --rounds "$FEDONCO_ROUNDS"
    exec fedonco server "$@"
    ;;
site)
    : "${FEDONCO_SITE:?set FEDONCO_SITE to this site's ID (A-E)}"
    DATA="${FEDONCO_DATA:-/data}"
    # the certificate and the TLS handshake first: a mistake shows before any data is generated
    if [ -n "${FEDONCO_TLS_DIR:-}" ]; then
        fedonco health "${FEDONCO_SERVER:-server:50051}" --tls-check "$FEDONCO_SITE"
    fi
    if [ ! -f "$DATA/manifest.json" ] && [ -n "${FEDONCO_IMPORT:-}" ]; then
        # the hospital's own CT, every case to this site, split by patient; it never leaves
        # shellcheck disable=SC2086  # FEDONCO_IMPORT_ARGS is a list of options
        fedonco data import "$FEDONCO_IMPORT" --site "$FEDONCO_SITE" --config "$CONFIG" \
            --out "$DATA" --force ${FEDONCO_IMPORT_ARGS:-}
    elif [ ! -f "$DATA/manifest.json" ]; then
        fedonco data --config "$CONFIG" --sites "$FEDONCO_SITE" --splits train,test --out "$DATA" \
            --force --no-gallery
    fi
    exec fedonco client --config "$CONFIG" --site "$FEDONCO_SITE" \
        --server "${FEDONCO_SERVER:-server:50051}" --data "$DATA" --state-dir /state "$@"
    ;;
release)
    exec fedonco release serve --models-root /runs --models-root /published \
        --address 0.0.0.0:50052 --exit-when "$DONE" "$@"
    ;;
judge)
    # The referee: every site's train/holdout (ground truth) and the attacker's public pool.
    fedonco data --config "$CONFIG" --splits train,holdout,attacker --out /data/judge --force \
        --no-gallery
    exec fedonco judge --run-dir "$RUN_DIR" --data /data/judge --release "${FEDONCO_RELEASE:-release:50052}" \
        --methods "$(methods)" "$@"
    ;;
health)
    exec fedonco health "$@"
    ;;
certs)
    exec fedonco certs "$@"
    ;;
fedonco)
    exec fedonco "$@"
    ;;
help | --help | -h)
    sed -n '2,24p' "$0"
    exec fedonco --help
    ;;
*)
    echo "entrypoint: unknown role '$role' (server, site, release, judge, certs, health, fedonco, help)" >&2
    exit 2
    ;;
esac
