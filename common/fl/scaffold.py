"""SCAFFOLD (Karimireddy et al., ICML 2020, Algorithm 1), the server's side; the site's correction
is ``common/training/scaffold.py``.

The server keeps the control variate ``c`` (one tensor per trainable parameter, zero at first)
and sends it with each round's weights (``payload_down``); every training site uploads
n_k · (c_k+ − c_k) next to n_k · y_k (``payload_up``), through the same aggregation layer as the
weights. With the sums S_y, S_c and the total weight W over the |S| sites that contributed, out
of the N that were available:

    x <- S_y / W                        (global step size 1: FedAvg's mean of the sites' models)
    c <- c + (|S| / N) · S_c / W

The paper averages uniformly over sites; here, as everywhere in this project, the mean is
example-weighted, so with full participation ``c`` stays the example-weighted mean of the
sites' ``c_k``. BatchNorm statistics carry no gradient: they are averaged as in FedAvg. ``c`` is
server state, checkpointed and restored with the run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import ClassVar

import numpy as np

from common.fl.instructions import FitInstructions
from common.fl.strategies import FedAvg
from common.fl.strategy import Params, register, weighted_average
from common.training.scaffold import PREFIX


@register
class Scaffold(FedAvg):
    name: ClassVar[str] = "scaffold"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._c: dict[str, np.ndarray] = {}  # parameter -> the server's control variate
        self._available = 0  # sites available when the round was configured (N)

    def setup(
        self, params: Mapping[str, np.ndarray], shared: Sequence[str], buffers: Iterable[str], cfg
    ) -> None:
        skip = set(buffers)
        self._c = {k: np.zeros(np.shape(params[k]), np.float64) for k in shared if k not in skip}

    def configure_fit(self, rnd: int, sites: Sequence[str]) -> dict[str, FitInstructions]:
        self._available = len(set(sites))
        return super().configure_fit(rnd, sites)

    def instructions(self, rnd: int, site: str) -> FitInstructions:
        return dataclasses.replace(super().instructions(rnd, site), control_variates=True)

    def payload_down(self, rnd: int) -> Params:
        return {PREFIX + k: c.astype(np.float32) for k, c in self._c.items()}

    def payload_up(self, shared: Mapping[str, np.ndarray]) -> Params:
        return {PREFIX + k: np.zeros_like(shared[k]) for k in self._c}

    def aggregate_fit(self, rnd, weighted_sum, total_weight, metrics=None, *, current) -> Params:
        deltas = {k[len(PREFIX) :]: v for k, v in weighted_sum.items() if k.startswith(PREFIX)}
        if set(deltas) != set(self._c):
            raise ValueError(
                f"round {rnd}: scaffold needs the sum of every control variate's "
                f"change, got {len(deltas)} of {len(self._c)}"
            )
        new = weighted_average(
            rnd,
            {k: v for k, v in weighted_sum.items() if k not in {PREFIX + d for d in deltas}},
            total_weight,
            current,
        )
        contributed = len(metrics) if metrics else self._available
        share = contributed / self._available if self._available else 1.0
        for k, s in deltas.items():
            step = self._c[k] + share * np.asarray(s, np.float64) / total_weight
            if not np.isfinite(step).all():
                raise ValueError(f"round {rnd}: scaffold's control variate of {k} is not finite")
            self._c[k] = step
        return new

    def state_dict(self) -> dict[str, np.ndarray]:
        return {f"c/{k}": v for k, v in self._c.items()}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        c = {}
        for key, value in state.items():
            kind, _, name = key.partition("/")
            if kind != "c" or name not in self._c or np.shape(value) != self._c[name].shape:
                raise ValueError(f"scaffold: unexpected state entry {key!r}")
            c[name] = np.asarray(value, np.float64)
        if set(c) != set(self._c):
            raise ValueError("scaffold: the checkpoint misses control variates")
        self._c = c
