"""`fedonco certs` and `fedonco health`: their arguments and typed options (light: no gRPC or
cryptography import). The handlers are ``common.wire.tls.run_certs_cmd`` and
``common.wire.channel.run_health_cmd``."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from common.config import DEFAULT_SITE_NAMES


@dataclass(frozen=True)
class CertsOptions:
    out: str
    sites: str = ",".join(DEFAULT_SITE_NAMES)
    config: str | None = None  # a profile whose roster names the sites and their CNs
    server_name: list[str] | None = None
    release_name: list[str] | None = None
    force: bool = False
    owner: tuple[int, int] | None = None


@dataclass(frozen=True)
class HealthOptions:
    address: str
    tls_dir: str | None = None
    timeout: float = 5.0
    tls_check: str | None = None  # a site: check its TLS to ADDRESS instead


def parse_owner(text: str) -> tuple[int, int]:
    """``UID:GID`` (numbers) -> (uid, gid); for ``fedonco certs --owner``."""
    uid, sep, gid = text.partition(":")
    if not (sep and uid.isdigit() and gid.isdigit()):
        raise ValueError(f"--owner wants UID:GID as numbers, e.g. 10001:10001, not {text!r}")
    return int(uid), int(gid)


def _owner(text: str) -> tuple[int, int]:
    try:
        return parse_owner(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_certs_arguments(p: argparse.ArgumentParser) -> None:
    """`certs`' arguments (fields of CertsOptions)."""
    p.add_argument("--out", required=True, help="output directory")
    who = p.add_mutually_exclusive_group()
    who.add_argument(
        "--sites",
        default=",".join(DEFAULT_SITE_NAMES),
        help="site IDs (default %(default)s)",
    )
    who.add_argument(
        "--config",
        metavar="PATH",
        help="a profile whose [[sites]] roster names the sites and their certificates' CNs",
    )
    p.add_argument(
        "--server-name",
        action="append",
        metavar="NAME",
        help="DNS name or IP the sites dial (repeatable; default: server, localhost, 127.0.0.1)",
    )
    p.add_argument(
        "--release-name",
        action="append",
        metavar="NAME",
        help="DNS name or IP callers dial for the release service (repeatable; "
        "default: release, localhost, 127.0.0.1)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing CA")
    p.add_argument(
        "--owner",
        type=_owner,
        metavar="UID:GID",
        help="hand each role's directory to this account (the user its container runs "
        "as: `deploy/compose user` prints it for the simulation); keys stay 0600, so "
        "readable by that account only. Needs root unless it is you",
    )


def add_health_arguments(p: argparse.ArgumentParser) -> None:
    """`health`'s arguments (fields of HealthOptions)."""
    p.add_argument("address", help="host:port")
    p.add_argument(
        "--tls-dir",
        default=os.environ.get("FEDONCO_TLS_DIR") or None,
        help="mutual TLS directory (env FEDONCO_TLS_DIR)",
    )
    p.add_argument("--timeout", type=float, default=5.0, help="seconds (default %(default)s)")
    p.add_argument(
        "--tls-check",
        metavar="SITE",
        help="instead: check that site SITE can talk "
        "TLS to ADDRESS with --tls-dir (its certificate names SITE, the handshake "
        "works); exit 2 naming the cause, 0 when it works or nothing listens yet (a "
        "site runs this before it generates its data)",
    )
