"""Command-line arguments that several roles share (a profile, a count, the device, mutual TLS).

Each role module registers its own arguments with these (``add_arguments(parser)``) and exposes a
handler that takes its typed options (a frozen dataclass); ``bench/cli.py`` builds the one
``fedonco`` parser from them and turns argparse's namespace into those options, so no
``argparse.Namespace`` travels below the benchmark layer.
"""

from __future__ import annotations

import argparse
import os


def add_config_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--config", help="TOML profile file, e.g. configs/quick.toml")
    g.add_argument("--profile", help="name of a shipped profile: smoke, quick or paper")
    p.add_argument("--seed", type=int, help="override the profile's seed")


def count(text: str) -> int:
    """A count on the command line (seeds, rounds, threads, ...): a whole number >= 1. argparse
    turns the error into one usage line (``--seeds 0`` used to run one seed silently)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def add_device_arg(
    p: argparse.ArgumentParser, what: str, default: str | None = None, extra: str = ""
) -> None:
    source = f"default {default}" if default else "default: the config's train.device, cpu"
    p.add_argument(
        "--device",
        default=default,
        metavar="DEVICE",
        help=f"where {what}: auto (CUDA if this process sees a GPU, else the CPU), "
        f"cpu, cuda or cuda:N ({source}). A CUDA device that is not there is an error "
        f"before anything starts; float32 throughout, no AMP (docs/gpu.md){extra}",
    )


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def add_tls_args(p: argparse.ArgumentParser, role: str) -> None:
    p.add_argument(
        "--tls-dir",
        default=os.environ.get("FEDONCO_TLS_DIR") or None,
        help=f"mutual TLS: directory with ca.crt, tls.crt, tls.key for the {role} "
        "(from `fedonco certs`; env FEDONCO_TLS_DIR)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        default=env_flag("FEDONCO_INSECURE"),
        help="allow plaintext gRPC on a non-loopback address (closed test networks "
        "only; env FEDONCO_INSECURE=1). Loopback is always allowed.",
    )


def add_release_tls_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tls-dir",
        default=os.environ.get("FEDONCO_RELEASE_TLS_DIR") or None,
        help="the release service speaks TLS: verify it against DIR/ca.crt (and "
        "present DIR/tls.crt + tls.key if there, e.g. `fedonco certs`' OUT/attacker; "
        "env FEDONCO_RELEASE_TLS_DIR)",
    )
