"""`fedonco client`: its arguments and typed options (light: no torch or gRPC import). The
handler is ``client.app.run_client_cmd``."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from common.cli_args import add_device_arg, add_tls_args, count


@dataclass(frozen=True)
class ClientOptions:
    config: str
    data: str
    site: str | None = None  # else env FEDONCO_SITE
    server: str | None = None  # else env FEDONCO_SERVER
    state_dir: str | None = None
    threads: int = 1
    device: str | None = None
    retry_timeout: float = 0.0
    tls_dir: str | None = None
    insecure: bool = False
    publish_dir: str | None = None
    allow_seeded_noise: bool = False


def add_client_arguments(p: argparse.ArgumentParser) -> None:
    """The site's arguments (fields of ClientOptions)."""
    p.add_argument("--config", required=True, help="TOML profile or a run's config.json")
    p.add_argument("--site", help="site id A-E (env FEDONCO_SITE)")
    p.add_argument("--server", help="server host:port (env FEDONCO_SERVER)")
    p.add_argument(
        "--data", required=True, help="dataset directory (only this site's shards are read)"
    )
    p.add_argument("--state-dir", help="where local state is kept (default: DATA-state)")
    p.add_argument("--threads", type=count, default=1, help="torch threads (default 1)")
    add_device_arg(p, "this site computes (training, DP-SGD, evaluation)")
    p.add_argument(
        "--retry-timeout",
        type=float,
        default=float(os.environ.get("FEDONCO_RETRY_TIMEOUT", 0) or 0),
        help="give up after the server was unreachable this long, seconds (default 0: "
        "retry for ever, backing off to one attempt every ~35 s, one log line each; "
        "env FEDONCO_RETRY_TIMEOUT)",
    )
    add_tls_args(p, "site")
    p.add_argument(
        "--publish-dir",
        default=os.environ.get("FEDONCO_PUBLISH_DIR") or None,
        help="FedBN: also publish this site's released model to "
        "PUBLISH_DIR/<run_id>/site<ID> (e.g. the release service's model store)",
    )
    p.add_argument(
        "--allow-seeded-noise",
        action="store_true",
        help="accept dp.randomness = 'seeded-simulation': this site's DP noise then "
        "derives from the run's public seed, so the server (or anyone with the "
        "config) can regenerate and subtract it and epsilon protects nothing against "
        "them. For simulations (`fedonco bench` passes it); a deployed site keeps "
        "the default 'site-secret' key (docs/dp.md, \"Randomness\")",
    )
