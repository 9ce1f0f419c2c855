"""Federated strategies as small hook classes named after their papers (numpy only, no gRPC).

The contract with secure aggregation (issue 4) is fixed here: **a strategy never sees an
individual update.** For each shared key a site uploads its weighted contribution
``n_k * params_k`` together with ``n_k`` (its number of training examples). The aggregation layer
below the strategy, i.e. secure aggregation or, without it, ``sum_weighted_updates``, produces only

    weighted_sum[key] = sum_k n_k * params_k[key]        total_weight = sum_k n_k

and ``aggregate_fit`` turns that into the next global model. Site metrics (loss, timing, n_k) are
not secret and are passed as plain dicts.

Hooks, called by the round loop:
    shared_keys(float_keys, norm_keys) -> the state_dict keys that leave a site
    configure_fit(rnd, sites)          -> {site: config} for the sites that train this round
    aggregate_fit(rnd, weighted_sum, total_weight, metrics, current=...) -> next global params

DP-SGD is a site-side training mode combined with a strategy (``dp=True``), not a strategy of its
own (distributed DP-SGD is one: ``DDPSGD``, whose rounds are single steps); the strategy emits the whole fit config a site trains with, the ``dp`` and ``secagg`` flags
included. Which strategy a method uses is in ``common/methods.py``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from common.seeds import site_round_seed

log = logging.getLogger(__name__)

Scalar = bool | int | float | str
Params = dict[str, np.ndarray]


def sum_weighted_updates(
    updates: Mapping[str, tuple[Mapping[str, np.ndarray], float]],
) -> tuple[Params, float]:
    """The plain (no secure aggregation) path: sum the sites' weighted contributions.

    ``updates`` maps site -> (``n_k * params_k`` per key, ``n_k``). Sums run in float64 and in
    sorted site order, so the result does not depend on the order in which updates arrived.
    Returns (weighted_sum per key, total weight).
    """
    if not updates:
        raise ValueError("no updates to sum: at least one site must contribute")
    sites = sorted(updates)
    ref_tensors, _ = updates[sites[0]]
    ref = {k: np.shape(v) for k, v in ref_tensors.items()}
    total = 0.0
    acc = {k: np.zeros(shape, dtype=np.float64) for k, shape in ref.items()}
    for site in sites:
        tensors, weight = updates[site]
        if not (math.isfinite(weight) and weight > 0):
            raise ValueError(f"site {site!r}: weight must be a positive number, got {weight}")
        if set(tensors) != set(ref):
            raise ValueError(
                f"site {site!r}: keys differ from site {sites[0]!r}: "
                f"missing {sorted(set(ref) - set(tensors))}, extra {sorted(set(tensors) - set(ref))}"
            )
        for k, v in tensors.items():
            if np.shape(v) != ref[k]:
                raise ValueError(f"site {site!r}: {k} has shape {np.shape(v)}, expected {ref[k]}")
            acc[k] += v
        total += float(weight)
    return acc, total


class FedAvg:
    """FedAvg (McMahan et al., 2017): the example-weighted mean of the sites' models.

    Every float state_dict entry is shared and averaged, BatchNorm running_mean / running_var
    included. ``fraction_fit`` < 1 samples that fraction of the available sites each round (at
    least ``min_fit_sites``), reproducibly from (seed, round).
    """

    name: ClassVar[str] = "fedavg"

    def __init__(
        self,
        *,
        local_epochs: int = 1,
        lr: float = 1e-3,
        batch_size: int = 16,
        fraction_fit: float = 1.0,
        min_fit_sites: int = 1,
        seed: int = 0,
        dp: bool = False,
        secagg: bool = False,
    ) -> None:
        if local_epochs < 1:
            raise ValueError(f"local_epochs must be >= 1, got {local_epochs}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 < fraction_fit <= 1:
            raise ValueError(f"fraction_fit must be in (0, 1], got {fraction_fit}")
        if min_fit_sites < 1:
            raise ValueError(f"min_fit_sites must be >= 1, got {min_fit_sites}")
        self.local_epochs = local_epochs
        self.lr = lr
        self.batch_size = batch_size
        self.fraction_fit = fraction_fit
        self.min_fit_sites = min_fit_sites
        self.seed = seed
        self.dp = bool(dp)
        self.secagg = bool(secagg)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"

    # -- which entries leave a site ------------------------------------------------------------

    def shared_keys(self, float_keys: Iterable[str], norm_keys: Iterable[str]) -> list[str]:
        """All float entries (parameters and BatchNorm buffers) are shared."""
        return sorted(float_keys)

    # -- who trains, with what config ----------------------------------------------------------

    def select_sites(self, rnd: int, sites: Sequence[str]) -> list[str]:
        available = sorted(set(sites))
        if len(available) < self.min_fit_sites:
            raise ValueError(
                f"round {rnd}: {len(available)} site(s) available, "
                f"min_fit_sites={self.min_fit_sites}"
            )
        k = max(self.min_fit_sites, math.ceil(self.fraction_fit * len(available)))
        if k >= len(available):
            return available
        rng = np.random.default_rng([self.seed, rnd])
        return sorted(rng.choice(available, size=k, replace=False).tolist())

    def fit_config(self, rnd: int, site: str) -> dict[str, Scalar]:
        return {
            "round": rnd,
            "local_epochs": self.local_epochs,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "proximal_mu": 0.0,
            "seed": site_round_seed(self.seed, rnd, site),
            "dp": self.dp,
            "secagg": self.secagg,
        }

    def configure_fit(self, rnd: int, sites: Sequence[str]) -> dict[str, dict[str, Scalar]]:
        """{site: training config} for the sites selected to train in round ``rnd`` (1-based)."""
        if rnd < 1:
            raise ValueError(f"rounds are 1-based, got {rnd}")
        return {site: self.fit_config(rnd, site) for site in self.select_sites(rnd, sites)}

    # -- aggregation ---------------------------------------------------------------------------

    def aggregate_fit(
        self,
        rnd: int,
        weighted_sum: Mapping[str, np.ndarray],
        total_weight: float,
        metrics: Mapping[str, Mapping[str, Scalar]] | None = None,
        *,
        current: Mapping[str, np.ndarray],
    ) -> Params:
        """Next global params: ``current`` with each summed key replaced by sum / total weight.

        The result keeps ``current``'s dtypes; keys not in ``weighted_sum`` (FedBN's norm layers)
        keep their current values. ``metrics`` (site -> metrics) is unused by FedAvg.
        """
        if not (math.isfinite(total_weight) and total_weight > 0):
            raise ValueError(f"round {rnd}: total weight must be positive, got {total_weight}")
        unknown = sorted(set(weighted_sum) - set(current))
        if unknown:
            raise ValueError(f"round {rnd}: keys not in the global model: {unknown}")
        new = {k: np.array(v, copy=True) for k, v in current.items()}
        for k, s in weighted_sum.items():
            s = np.asarray(s, dtype=np.float64)
            if s.shape != new[k].shape:
                raise ValueError(f"round {rnd}: {k} has shape {s.shape}, expected {new[k].shape}")
            mean = s / total_weight
            if not np.isfinite(mean).all():
                raise ValueError(f"round {rnd}: the aggregate of {k} is not finite")
            new[k] = mean.astype(new[k].dtype)
        return new


class FedProx(FedAvg):
    """FedProx (Li et al., 2020): FedAvg whose sites add (mu/2)·‖w − w_global‖² to their loss.

    The server side only sends ``proximal_mu`` (default 0.01); the term is computed at the site
    (common/training/local.py). Aggregation is FedAvg's.
    """

    name: ClassVar[str] = "fedprox"

    def __init__(self, *, proximal_mu: float = 0.01, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not (math.isfinite(proximal_mu) and proximal_mu >= 0):
            raise ValueError(f"proximal_mu must be a finite number >= 0, got {proximal_mu}")
        self.proximal_mu = proximal_mu

    def fit_config(self, rnd: int, site: str) -> dict[str, Scalar]:
        return {**super().fit_config(rnd, site), "proximal_mu": self.proximal_mu}


class FedBN(FedAvg):
    """FedBN (Li et al., 2021): FedAvg over everything except normalisation layers.

    Every normalisation layer's parameters and buffers (found by module type, see
    ``common.model.norm_keys``) stay at their site; each site evaluates its own model.
    """

    name: ClassVar[str] = "fedbn"

    def shared_keys(self, float_keys: Iterable[str], norm_keys: Iterable[str]) -> list[str]:
        local = set(norm_keys)
        return sorted(k for k in float_keys if k not in local)


class DDPSGD(FedAvg):
    """Distributed DP-SGD (``common/training/ddp.py``): a round is one DP-SGD step. The sites send
    the noisy sums of their rounded, clipped per-slice gradients (their shares of the noise
    included) through secure aggregation; ``weighted_sum`` is the sum over the sites in gradient
    units and ``total_weight`` the sites' training-set sizes summed, so the step uses the noisy
    mean over the expected union batch q * sum(n_k). The optimizer (Adam, ``lr``) runs here;
    ``plan_run`` fixes the run's public parameters (q, C, s, the noise shares) before round 1."""

    name: ClassVar[str] = "ddpsgd"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        from common.training.ddp import ServerAdam

        self.plan = None
        self.opt = ServerAdam(self.lr)

    def plan_run(self, plan) -> None:
        self.plan = plan

    def fit_config(self, rnd: int, site: str) -> dict[str, Scalar]:
        if self.plan is None:
            raise ValueError("ddp-sgd: plan_run was not called")
        p = self.plan
        return {**super().fit_config(rnd, site), "dp": False, "ddp": True, "ddp_q": p.q,
                "ddp_clip": p.clip, "ddp_scale": p.scale, "ddp_mu_share": p.mu_share}  # fmt: skip

    def aggregate_fit(self, rnd, weighted_sum, total_weight, metrics=None, *, current) -> Params:
        from common.training.ddp import ddp_step

        unknown = sorted(set(weighted_sum) - set(current))
        if unknown:
            raise ValueError(f"round {rnd}: keys not in the global model: {unknown}")
        return ddp_step(self.opt, current, weighted_sum, total_weight, self.plan.q)

    def state_dict(self) -> dict[str, np.ndarray]:
        return self.opt.state_dict()

    def load_state_dict(self, state) -> None:
        self.opt.load_state_dict(state)


STRATEGIES: dict[str, type[FedAvg]] = {cls.name: cls for cls in (FedAvg, FedProx, FedBN, DDPSGD)}


def get_strategy(name: str, **kwargs: Any) -> FedAvg:
    """Build a strategy by name ("fedavg", "fedprox", "fedbn", "ddpsgd"); kwargs go to its
    constructor."""
    try:
        cls = STRATEGIES[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown strategy {name!r}; known: {sorted(STRATEGIES)} "
            "(DP-SGD is a client training mode used with fedavg)"
        ) from None
    return cls(**kwargs)
