"""The built-in strategies, named after their papers; FedAdam is in ``common/fl/fedadam.py``.

DP-SGD is a site-side training mode combined with a strategy (``dp=True``: the sites train with
``TrainMode.DP``), not a strategy of its own; distributed DP-SGD is one (``DDPSGD``: its rounds
are single noisy steps). Which strategy a method uses is in ``common/methods.py``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from common.fl.instructions import DDPParams, FitInstructions, TrainMode
from common.fl.strategy import Params, Strategy, check_sum, register


@register
class FedAvg(Strategy):
    """FedAvg (McMahan et al., 2017): the example-weighted mean of the sites' models; every float
    state_dict entry is shared and averaged, BatchNorm running_mean / running_var included."""

    name: ClassVar[str] = "fedavg"


@register
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

    @classmethod
    def config_kwargs(cls, cfg, method) -> dict[str, Any]:
        return {**super().config_kwargs(cfg, method), "proximal_mu": cfg.fl.proximal_mu}

    def instructions(self, rnd: int, site: str) -> FitInstructions:
        return dataclasses.replace(super().instructions(rnd, site), proximal_mu=self.proximal_mu)


@register
class FedBN(FedAvg):
    """FedBN (Li et al., 2021): FedAvg over everything except normalisation layers.

    Every normalisation layer's parameters and buffers (found by module type, see
    ``common.model.norm_keys``) stay at their site; each site evaluates its own model.
    """

    name: ClassVar[str] = "fedbn"

    def shared_keys(self, float_keys: Iterable[str], norm_keys: Iterable[str]) -> list[str]:
        local = set(norm_keys)
        return sorted(k for k in float_keys if k not in local)


@register
class DDPSGD(FedAvg):
    """Distributed DP-SGD (``common/training/ddp.py``): a round is one DP-SGD step. The sites send
    the noisy sums of their rounded, clipped per-slice gradients (their shares of the noise
    included) through secure aggregation; ``weighted_sum`` is the sum over the sites in gradient
    units and ``total_weight`` the sites' training-set sizes summed, so the step uses the noisy
    mean over the expected union batch q * sum(n_k). The optimizer (Adam, ``lr``) runs here;
    ``setup`` fixes the run's public parameters (q, C, s, the noise shares) before round 1."""

    name: ClassVar[str] = "ddpsgd"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        from common.training.ddp import ServerAdam

        self._plan = None
        self._opt = ServerAdam(self.lr)

    def setup(
        self, params: Mapping[str, np.ndarray], shared: Sequence[str], buffers: Iterable[str], cfg
    ) -> None:
        from common.training.ddp import plan_for

        self._plan = plan_for(cfg, sum(np.asarray(params[k]).size for k in shared))

    def ring_plan(self):
        return self._plan

    def instructions(self, rnd: int, site: str) -> FitInstructions:
        if self._plan is None:
            raise ValueError("ddp-sgd: setup was not called")
        p = self._plan
        return dataclasses.replace(
            super().instructions(rnd, site),
            mode=TrainMode.DDP,
            ddp=DDPParams(q=p.q, clip=p.clip, scale=p.scale, mu_share=p.mu_share),
        )

    def aggregate_fit(self, rnd, weighted_sum, total_weight, metrics=None, *, current) -> Params:
        from common.training.ddp import ddp_step

        check_sum(rnd, weighted_sum, total_weight, current)
        return ddp_step(self._opt, current, weighted_sum, total_weight, self._plan.q)

    def state_dict(self) -> dict[str, np.ndarray]:
        return self._opt.state_dict()

    def load_state_dict(self, state) -> None:
        self._opt.load_state_dict(state)
