"""What a strategy tells a site to do in one round: typed here, wire scalars only at the wire.

``FitInstructions`` is built by a strategy (``configure_fit``), read by the site's training
(``client/app.py``, the in-process simulator ``common/fl/simulate.py``) and converted to the
protobuf scalar map and back only where it crosses the network (``to_scalars`` at the server,
``from_scalars`` at the site, which validates what arrives: a site trusts no value from the
network until it has a type and a range).

The scalar keys are those of the wire since the first release (``round``, ``local_epochs``,
``lr``, ``batch_size``, ``proximal_mu``, ``seed``, ``dp``, ``secagg``; ``ddp`` and its four
``ddp_*`` parameters for distributed DP; ``control_variates`` for SCAFFOLD, sent only when
true), so sites and servers of either side of this change
understand each other.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass

Scalar = bool | int | float | str


class TrainMode(enum.Enum):
    """How a site trains in a round."""

    PLAIN = "plain"  # local epochs of (proximal) SGD/Adam: FedAvg, FedProx, FedBN, FedAdam
    DP = "dp"  # local epochs of DP-SGD (Opacus) with the site's own accountant
    DDP = "ddp"  # one distributed-DP step: the site's noisy integer gradient sum


@dataclass(frozen=True)
class DDPParams:
    """Distributed DP's public round parameters (``common.training.ddp.DDPPlan``)."""

    q: float  # Poisson sampling rate of each slice
    clip: float  # per-slice L2 clip
    scale: float  # the integer ring's scale (gradient units -> integers)
    mu_share: float  # this site's share of the Skellam noise variance


@dataclass(frozen=True)
class FitInstructions:
    """One site's orders for one round."""

    round: int
    seed: int  # the site's seed for this round (shuffling, dropout of a Poisson sample, ...)
    local_epochs: int
    lr: float
    batch_size: int
    mode: TrainMode = TrainMode.PLAIN
    proximal_mu: float = 0.0  # FedProx's pull towards the round's global model
    secagg: bool = False  # upload through secure aggregation
    control_variates: bool = False  # SCAFFOLD's correction (common/training/scaffold.py)
    ddp: DDPParams | None = None  # mode DDP only

    def __post_init__(self) -> None:
        _check(self)

    def to_scalars(self) -> dict[str, Scalar]:
        """The protobuf scalar map the server sends (``common.wire.serde.scalars_to_proto``)."""
        out: dict[str, Scalar] = {
            "round": self.round,
            "local_epochs": self.local_epochs,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "proximal_mu": self.proximal_mu,
            "seed": self.seed,
            "dp": self.mode is TrainMode.DP,
            "secagg": self.secagg,
        }
        if self.control_variates:
            out["control_variates"] = True
        if self.ddp is not None:
            out.update(
                ddp=True,
                ddp_q=self.ddp.q,
                ddp_clip=self.ddp.clip,
                ddp_scale=self.ddp.scale,
                ddp_mu_share=self.ddp.mu_share,
            )
        return out

    @classmethod
    def from_scalars(cls, config: Mapping[str, Scalar]) -> FitInstructions:
        """Parse what a site received; ``ValueError`` naming the field for anything missing, of
        the wrong type or out of range (never a KeyError or TypeError out of the site)."""
        ddp = None
        if _get(config, "ddp", bool, False):
            ddp = DDPParams(
                q=_get(config, "ddp_q", float),
                clip=_get(config, "ddp_clip", float),
                scale=_get(config, "ddp_scale", float),
                mu_share=_get(config, "ddp_mu_share", float),
            )
        dp = _get(config, "dp", bool, False)
        if dp and ddp is not None:
            raise ValueError("fit config: 'dp' and 'ddp' are exclusive")
        mode = TrainMode.DDP if ddp is not None else TrainMode.DP if dp else TrainMode.PLAIN
        return cls(
            round=_get(config, "round", int),
            seed=_get(config, "seed", int),
            local_epochs=_get(config, "local_epochs", int),
            lr=_get(config, "lr", float),
            batch_size=_get(config, "batch_size", int),
            mode=mode,
            proximal_mu=_get(config, "proximal_mu", float, 0.0),
            secagg=_get(config, "secagg", bool, False),
            ddp=ddp,
            control_variates=_get(config, "control_variates", bool, False),
        )


_MISSING = object()


def _get(config: Mapping[str, Scalar], key: str, kind: type, default=_MISSING):
    """``config[key]`` as ``kind``: ints stay ints (a bool is not one), floats accept ints."""
    if key not in config:
        if default is _MISSING:
            raise ValueError(f"fit config: {key!r} is missing")
        return default
    value = config[key]
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok:
        raise ValueError(f"fit config: {key!r} must be {kind.__name__}, got {value!r}")
    return float(value) if kind is float else value


def _check(f: FitInstructions) -> None:
    def finite(name: str, value: float, low: float, *, strict: bool) -> None:
        if not (math.isfinite(value) and (value > low if strict else value >= low)):
            cmp = ">" if strict else ">="
            raise ValueError(f"fit config: {name} must be a finite number {cmp} {low}, got {value}")

    if f.round < 1:
        raise ValueError(f"fit config: round must be >= 1, got {f.round}")
    if f.local_epochs < 1:
        raise ValueError(f"fit config: local_epochs must be >= 1, got {f.local_epochs}")
    if f.batch_size < 1:
        raise ValueError(f"fit config: batch_size must be >= 1, got {f.batch_size}")
    finite("lr", f.lr, 0.0, strict=True)
    finite("proximal_mu", f.proximal_mu, 0.0, strict=False)
    if (f.mode is TrainMode.DDP) != (f.ddp is not None):
        raise ValueError("fit config: distributed DP's parameters go with mode DDP, and only then")
    if f.control_variates and f.mode is TrainMode.DDP:
        raise ValueError("fit config: control variates go with weights training, not ddp")
    if f.ddp is not None:
        if not 0 < f.ddp.q <= 1:
            raise ValueError(f"fit config: ddp_q must be in (0, 1], got {f.ddp.q}")
        finite("ddp_clip", f.ddp.clip, 0.0, strict=True)
        finite("ddp_scale", f.ddp.scale, 0.0, strict=True)
        finite("ddp_mu_share", f.ddp.mu_share, 0.0, strict=False)
