"""`fedonco attack`: its arguments and typed options (light: no torch or gRPC import). The
handler is ``attacks.cli.run_attack_cmd``."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from common.cli_args import add_device_arg, add_release_tls_arg, count


@dataclass(frozen=True)
class AttackOptions:
    target: str
    pool: str
    candidates: list[str]
    config: str
    out: list[str]
    model: list[str] | None = None
    site: list[str] | None = None
    shadows: int | None = None
    auditor: int | None = None
    tls_dir: str | None = None
    query_budget: int | None = None
    seed: int = 0
    connect_timeout: float = 20.0
    device: str | None = None


def add_attack_arguments(p: argparse.ArgumentParser) -> None:
    """The attacker's arguments (fields of AttackOptions)."""
    p.add_argument("--target", required=True, help="release service host:port")
    p.add_argument(
        "--model",
        action="append",
        help="model name on the release service (default: "
        "its default model); repeat with --candidates and --out, once per target",
    )
    p.add_argument("--pool", required=True, help="dataset directory with the 'attacker' split")
    p.add_argument(
        "--candidates",
        action="append",
        required=True,
        help=".npz with 'images' and 'masks' (no labels), one per target",
    )
    p.add_argument("--config", required=True, help="the public training recipe (profile/config)")
    p.add_argument(
        "--out",
        action="append",
        required=True,
        help="output directory (scores.npz, attack.json), one per target",
    )
    p.add_argument(
        "--site",
        action="append",
        help="the site that released this model, for a "
        "method whose sites release their own models (FedBN; public knowledge): the "
        "shadow federation's model of that site is the reference; once per target",
    )
    p.add_argument(
        "--shadows",
        type=int,
        help="number of shadow federations (default: "
        "mia.n_shadows; >= 2 lets the attack pick its strongest rung on them)",
    )
    p.add_argument(
        "--auditor",
        type=int,
        metavar="N",
        help="also run the auditor's online rungs "
        "with N shadows that train on half the candidates each (even; default "
        "mia.auditor_shadows; needs 'sites' in the candidates)",
    )
    add_release_tls_arg(p)
    p.add_argument(
        "--query-budget",
        type=count,
        metavar="Q",
        help="at most Q Predict calls per "
        "target (slices); views beyond it are dropped (default mia.query_budget)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=20.0,
        metavar="S",
        help="give up (one error line, exit 2) when the release service has not "
        "answered within S seconds (default %(default)s)",
    )
    add_device_arg(p, "the attacker's shadow federations compute")


@dataclass(frozen=True)
class WhiteboxOptions:
    release: list[str]
    pool: str
    candidates: list[str]
    config: str
    out: list[str]
    site: list[str] | None = None
    shadows: int | None = None
    seed: int = 0
    device: str | None = None


def add_whitebox_arguments(p: argparse.ArgumentParser) -> None:
    """The white-box attacker's arguments (fields of WhiteboxOptions)."""
    p.add_argument(
        "--release",
        action="append",
        required=True,
        help="a released model's directory (release.json + model.npz); repeat with "
        "--candidates and --out, once per target",
    )
    p.add_argument("--pool", required=True, help="dataset directory with the 'attacker' split")
    p.add_argument(
        "--candidates",
        action="append",
        required=True,
        help=".npz with 'images' and 'masks' (no labels), one per target",
    )
    p.add_argument("--config", required=True, help="the public training recipe (profile/config)")
    p.add_argument(
        "--out",
        action="append",
        required=True,
        help="output directory (scores.npz, attack.json), one per target",
    )
    p.add_argument(
        "--site",
        action="append",
        help="the site that released this model (FedBN; public): the shadows' model of that "
        "site is the reference; once per target",
    )
    p.add_argument(
        "--shadows",
        type=int,
        help="number of shadow federations (default mia.n_shadows; >= 2 lets the attack "
        "pick its strongest rung on them)",
    )
    p.add_argument("--seed", type=int, default=0)
    add_device_arg(p, "the attacker's shadow federations and gradients compute")


@dataclass(frozen=True)
class InversionOptions:
    view: str
    config: str
    out: str
    images: int = 1
    steps: int | None = None
    restarts: int | None = None
    seed: int = 0


def add_inversion_arguments(p: argparse.ArgumentParser) -> None:
    """The inversion attacker's arguments (fields of InversionOptions)."""
    p.add_argument(
        "--view",
        required=True,
        help="directory with what the server holds for the round: view.json, sent.npz (the "
        "global weights it sent) and held.npz (one site's upload, the sites' mean, or "
        "distributed DP's noisy gradient sum)",
    )
    p.add_argument("--config", required=True, help="the public training recipe (profile/config)")
    p.add_argument(
        "--out", required=True, help="output directory (reconstruction.npz, attack.json)"
    )
    p.add_argument(
        "--images", type=count, default=1, help="slices to reconstruct (default %(default)s)"
    )
    p.add_argument(
        "--steps", type=count, help="optimisation steps per restart (default: the module's)"
    )
    p.add_argument("--restarts", type=count, help="random restarts (default: the module's)")
    p.add_argument("--seed", type=int, default=0)
