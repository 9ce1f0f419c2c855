"""FedAdam (Reddi et al., ICLR 2021, "Adaptive Federated Optimization", Algorithm 2).

The sites train as in FedAvg; the server treats the change of the example-weighted mean as a
pseudo-gradient and takes an Adam step with it:

    Δ_t = mean_k(x_k) − x_t                    (what FedAvg would add)
    m_t = β1 m_{t−1} + (1 − β1) Δ_t
    v_t = β2 v_{t−1} + (1 − β2) Δ_t²
    x_{t+1} = x_t + η m_t / (√v_t + τ)

(no bias correction, as in the paper; τ bounds the adaptivity). Only parameters take the Adam
step: the BatchNorm running statistics are averaged as in FedAvg (an Adam step on a variance
could make it negative). The moments are server state: checkpointed and restored with the run.
Defaults are the paper's (β1 0.9, β2 0.99, τ 1e-3, η 1e-2: ``fl.server_lr`` and friends in the
config), not tuned on this benchmark.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from common.fl.strategies import FedAvg
from common.fl.strategy import Params, register, weighted_average


@register
class FedAdam(FedAvg):
    name: ClassVar[str] = "fedadam"

    def __init__(
        self,
        *,
        server_lr: float = 1e-2,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        for name, value, ok in (
            ("server_lr", server_lr, server_lr > 0),
            ("beta1", beta1, 0 <= beta1 < 1),
            ("beta2", beta2, 0 <= beta2 < 1),
            ("tau", tau, tau > 0),
        ):
            if not (math.isfinite(value) and ok):
                raise ValueError(f"fedadam: {name} out of range, got {value}")
        self.server_lr, self.beta1, self.beta2, self.tau = server_lr, beta1, beta2, tau
        self._buffers: set[str] = set()
        self._m: dict[str, np.ndarray] = {}
        self._v: dict[str, np.ndarray] = {}

    @classmethod
    def config_kwargs(cls, cfg, method) -> dict[str, Any]:
        f = cfg.fl
        return {
            **super().config_kwargs(cfg, method),
            "server_lr": f.server_lr,
            "beta1": f.server_beta1,
            "beta2": f.server_beta2,
            "tau": f.server_tau,
        }

    def setup(
        self, params: Mapping[str, np.ndarray], shared: Sequence[str], buffers: Iterable[str], cfg
    ) -> None:
        self._buffers = set(buffers)

    def aggregate_fit(self, rnd, weighted_sum, total_weight, metrics=None, *, current) -> Params:
        mean = weighted_average(rnd, weighted_sum, total_weight, current)
        new = dict(mean)
        for k in weighted_sum:
            if k in self._buffers:
                continue  # running statistics: FedAvg's mean
            x = np.asarray(current[k], np.float64)
            delta = np.asarray(mean[k], np.float64) - x
            m = self.beta1 * self._m.get(k, 0.0) + (1 - self.beta1) * delta
            v = self.beta2 * self._v.get(k, 0.0) + (1 - self.beta2) * delta * delta
            self._m[k], self._v[k] = m, v
            step = x + self.server_lr * m / (np.sqrt(v) + self.tau)
            if not np.isfinite(step).all():
                raise ValueError(f"round {rnd}: fedadam's step of {k} is not finite")
            new[k] = step.astype(np.asarray(current[k]).dtype)
        return new

    def state_dict(self) -> dict[str, np.ndarray]:
        return {
            **{f"m/{k}": v for k, v in self._m.items()},
            **{f"v/{k}": v for k, v in self._v.items()},
        }

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        m, v = {}, {}
        for key, value in state.items():
            kind, _, name = key.partition("/")
            if kind not in ("m", "v") or not name:
                raise ValueError(f"fedadam: unexpected state entry {key!r}")
            (m if kind == "m" else v)[name] = np.asarray(value, np.float64)
        if set(m) != set(v):
            raise ValueError("fedadam: first and second moments name different keys")
        self._m, self._v = m, v
