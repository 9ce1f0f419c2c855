"""`fedonco server` and `fedonco release serve`: their arguments and typed options (light: no
torch or gRPC import, so `fedonco --help` stays fast). The handlers are
``server.campaign.run_server_cmd`` and ``server.inference.run_release_cmd``."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from common.cli_args import add_device_arg, add_tls_args, count, env_flag
from common.methods import METHOD_NAMES


@dataclass(frozen=True)
class ServerOptions:
    config: str
    data: str
    method: str | None = None
    methods: str | None = None  # a campaign: comma-separated
    run_dir: str | None = None
    resume: str | None = None
    address: str = "127.0.0.1:50051"
    port_file: str | None = None
    rounds: int | None = None
    threads: int | None = None
    device: str | None = None
    tls_dir: str | None = None
    insecure: bool = False
    hold_until: str | None = None
    hold_timeout: float = 3600.0


@dataclass(frozen=True)
class ReleaseOptions:
    model: str | None = None
    models_root: list[str] | None = None
    address: str = "127.0.0.1:50052"
    port_file: str | None = None
    max_batch: int = 64
    device: str | None = "cpu"
    exit_when: str | None = None
    tls_dir: str | None = None
    insecure: bool = False
    client_certs: bool = False
    max_queries: int | None = None


def add_server_arguments(p: argparse.ArgumentParser) -> None:
    """The server's arguments (fields of ServerOptions)."""
    p.add_argument("--config", required=True, help="TOML profile or a run's config.json")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--method", choices=list(METHOD_NAMES), help="FL method")
    g.add_argument(
        "--methods",
        help="a campaign: one run per method (comma-separated), one after "
        "another on the same port, into RUN_DIR/<method>; sites follow from run to run",
    )
    p.add_argument("--data", required=True, help="dataset directory (the server reads 'test')")
    p.add_argument("--run-dir", help="new run directory")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run after its last round")
    p.add_argument(
        "--address",
        default=os.environ.get("FEDONCO_LISTEN", "127.0.0.1:50051"),
        help="host:port to listen on; port 0 picks a free one (default %(default)s)",
    )
    p.add_argument("--port-file", help="write the bound port to this file")
    p.add_argument("--rounds", type=count, help="override train.rounds")
    p.add_argument("--threads", type=count, default=None, help="torch threads")
    add_device_arg(p, "the server's model computes (evaluation, public pretraining)")
    add_tls_args(p, "server")
    p.add_argument(
        "--hold-until",
        metavar="FILE",
        help="after the last run keep the sites "
        "waiting until FILE exists (compose: the judge's end-of-audit marker)",
    )
    p.add_argument(
        "--hold-timeout",
        type=float,
        default=3600.0,
        help="longest wait for --hold-until, seconds (default %(default)s)",
    )


def add_release_arguments(p: argparse.ArgumentParser) -> None:
    """`release serve`'s arguments (fields of ReleaseOptions)."""
    p.add_argument(
        "--model", help="the default model: a release directory (model.npz + release.json)"
    )
    p.add_argument(
        "--models-root",
        action="append",
        metavar="DIR",
        help="also serve any release under DIR by its relative path as the request's "
        "model name (repeatable)",
    )
    p.add_argument("--address", default=os.environ.get("FEDONCO_LISTEN", "127.0.0.1:50052"))
    p.add_argument("--port-file", help="write the bound port to this file")
    p.add_argument("--max-batch", type=count, default=64, help="slices per Predict (default 64)")
    add_device_arg(p, "the served models compute", default="cpu")
    p.add_argument("--exit-when", metavar="FILE", help="stop once FILE exists (compose)")
    p.add_argument(
        "--tls-dir",
        default=os.environ.get("FEDONCO_RELEASE_TLS_DIR") or None,
        help="serve over TLS with the certificate in DIR (ca.crt, tls.crt, tls.key: "
        "`fedonco certs` makes OUT/release; env FEDONCO_RELEASE_TLS_DIR)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        default=env_flag("FEDONCO_INSECURE"),
        help="without --tls-dir: allow plaintext on a non-loopback address (closed "
        "test networks only; env FEDONCO_INSECURE=1). Loopback is always allowed.",
    )
    p.add_argument(
        "--client-certs",
        action="store_true",
        default=os.environ.get("FEDONCO_RELEASE_CLIENT_CERTS") == "1",
        help="with --tls-dir: require a client certificate signed by DIR/ca.crt from "
        "every caller (mutual TLS); it names the caller for --max-queries (without it, "
        "no certificate is asked for and a caller is its host; env "
        "FEDONCO_RELEASE_CLIENT_CERTS=1)",
    )
    p.add_argument(
        "--max-queries",
        type=count,
        metavar="Q",
        help="slices one caller (client "
        "certificate with --client-certs, else host) may have predicted; beyond it RESOURCE_EXHAUSTED "
        "(default: no limit)",
    )
