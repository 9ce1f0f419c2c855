"""The federated-method protocol: one object per FL method, driven by both round loops.

The gRPC server (``server/app.py``) and the in-process simulator the attacker's shadow
federations use (``common/fl/simulate.py``) run the same hooks of the same object, so a method
added here is simulated as it runs, never silently as FedAvg. Strategies are numpy only: they
never see protobuf, and **never an individual update**: for each shared key the aggregation
layer below them (secure aggregation, or ``sum_weighted_updates`` without it, or the simulator's
float64 sum) hands over only

    weighted_sum[key] = sum_k n_k * params_k[key]        total_weight = sum_k n_k

Hooks (each has a default; a method overrides what it changes):

- ``from_config(cfg, method)``: build from the run's config (``cfg.for_method(method)``);
- ``setup(params, shared, buffers, cfg)``: once, before round 1, with the initial weights, the
  keys that leave a site and which of them are buffers (BatchNorm statistics, not parameters);
- ``shared_keys(float_keys, norm_keys)``: the state_dict entries that leave a site;
- ``configure_fit(rnd, sites)``: ``{site: FitInstructions}`` for the sites that train;
- ``payload_down(rnd)`` / ``payload_up(shared)``: extra named tensors sent to the training sites
  with the round's weights, and the zero templates of those each training site adds to its
  upload (weighted by n_k like its weights, summed by the same aggregation layer, secure
  aggregation included; ``aggregate_fit`` finds their sums in ``weighted_sum``). Their names
  contain a '/', which no state_dict key does (``split_extras``); none by default. SCAFFOLD's
  control variates travel this way (``common/fl/scaffold.py``);
- ``aggregate_fit(rnd, weighted_sum, total_weight, metrics, current=...)``: the next global
  weights (``metrics``: the contributing sites');
- ``state_dict()`` / ``load_state_dict(state)``: server-side state a checkpoint must keep (an
  optimizer's moments); empty by default;
- ``ring_plan()``: distributed DP's public plan when the sites send noisy integer sums;
- ``fingerprint()``: every setting that changes what the method trains (caches key on it).

Register a strategy with ``@register``; a method (``common/methods.py``) names it by ``name``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from common.fl.instructions import FitInstructions, TrainMode
from common.seeds import site_round_seed

Params = dict[str, np.ndarray]
EXTRA = "/"  # in the name of every extra tensor, in no state_dict key
STRATEGIES: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make ``cls`` known by its ``name``."""
    if cls.name in STRATEGIES and STRATEGIES[cls.name] is not cls:
        raise ValueError(f"strategy {cls.name!r} registered twice")
    STRATEGIES[cls.name] = cls
    return cls


class Strategy:
    """FedAvg's behaviour as the defaults of every hook (McMahan et al., 2017): every float entry
    is shared, the sites train plainly, the next model is the example-weighted mean.
    ``fraction_fit`` < 1 samples that fraction of the available sites each round (at least
    ``min_fit_sites``), reproducibly from (seed, round)."""

    name: ClassVar[str] = "strategy"

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

    @classmethod
    def config_kwargs(cls, cfg, method) -> dict[str, Any]:
        """The constructor's arguments from a run's config (``method``: its ``Method`` row)."""
        t = cfg.train
        return dict(
            local_epochs=t.local_epochs,
            lr=t.lr,
            batch_size=t.batch_size,
            fraction_fit=cfg.fl.fraction_fit,
            min_fit_sites=cfg.fl.min_fit_sites,
            seed=cfg.seed,
            dp=method.dp,
            secagg=cfg.secagg.enabled,
        )

    @classmethod
    def from_config(cls, cfg, method) -> Strategy:
        return cls(**cls.config_kwargs(cfg, method))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.fingerprint().items() if k != "strategy")
        return f"{type(self).__name__}({args})"

    def fingerprint(self) -> dict[str, Any]:
        """What changes training (the constructor's settings but the seed, which caches key on
        separately); JSON-serialisable."""
        hyper = {k: v for k, v in vars(self).items() if k != "seed" and not k.startswith("_")}
        return {"strategy": self.name, **hyper}

    # -- before round 1 ------------------------------------------------------------------------

    def setup(
        self, params: Mapping[str, np.ndarray], shared: Sequence[str], buffers: Iterable[str], cfg
    ) -> None:
        """Called once before round 1 (also on resume, before ``load_state_dict``)."""

    def shared_keys(self, float_keys: Iterable[str], norm_keys: Iterable[str]) -> list[str]:
        """All float entries (parameters and BatchNorm buffers) are shared."""
        return sorted(float_keys)

    # -- who trains, with what instructions ----------------------------------------------------

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

    def instructions(self, rnd: int, site: str) -> FitInstructions:
        return FitInstructions(
            round=rnd,
            seed=site_round_seed(self.seed, rnd, site),
            local_epochs=self.local_epochs,
            lr=self.lr,
            batch_size=self.batch_size,
            mode=TrainMode.DP if self.dp else TrainMode.PLAIN,
            secagg=self.secagg,
        )

    def configure_fit(self, rnd: int, sites: Sequence[str]) -> dict[str, FitInstructions]:
        """{site: instructions} for the sites selected to train in round ``rnd`` (1-based)."""
        if rnd < 1:
            raise ValueError(f"rounds are 1-based, got {rnd}")
        return {site: self.instructions(rnd, site) for site in self.select_sites(rnd, sites)}

    # -- extra tensors both ways ---------------------------------------------------------------

    def payload_down(self, rnd: int) -> Params:
        """Extra tensors the training sites of round ``rnd`` receive with the weights."""
        return {}

    def payload_up(self, shared: Mapping[str, np.ndarray]) -> Params:
        """Zero templates (name, dtype, shape) of the extra tensors each training site uploads
        next to its weights ``shared``."""
        return {}

    def upload_template(self, shared: Mapping[str, np.ndarray]) -> Params:
        """Everything a training site uploads: its shared weights and the extras."""
        extras = self.payload_up(shared)
        bad = sorted(k for k in extras if EXTRA not in k or k in shared)
        if bad:
            raise ValueError(f"{self.name}: extra tensor names must contain {EXTRA!r}: {bad[:3]}")
        return {**shared, **extras}

    # -- aggregation ---------------------------------------------------------------------------

    def aggregate_fit(
        self,
        rnd: int,
        weighted_sum: Mapping[str, np.ndarray],
        total_weight: float,
        metrics: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        current: Mapping[str, np.ndarray],
    ) -> Params:
        """Next global params: ``current`` with each summed key replaced by sum / total weight."""
        return weighted_average(rnd, weighted_sum, total_weight, current)

    # -- server-side state ---------------------------------------------------------------------

    def state_dict(self) -> dict[str, np.ndarray]:
        return {}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        if state:
            raise ValueError(f"{self.name} keeps no server state, got {sorted(state)[:3]}")

    def ring_plan(self):
        """Distributed DP's plan (``common.training.ddp.DDPPlan``) when the sites send noisy
        integer gradient sums instead of weights; None otherwise."""
        return None


def split_extras(tensors: Mapping[str, np.ndarray]) -> tuple[Params, Params]:
    """(model entries, extra tensors) of what arrived with a round."""
    model = {k: v for k, v in tensors.items() if EXTRA not in k}
    return model, {k: v for k, v in tensors.items() if EXTRA in k}


def weighted_average(
    rnd: int,
    weighted_sum: Mapping[str, np.ndarray],
    total_weight: float,
    current: Mapping[str, np.ndarray],
) -> Params:
    """``current`` with each summed key replaced by sum / total weight, in ``current``'s dtypes;
    keys not in ``weighted_sum`` (FedBN's norm layers) keep their current values."""
    check_sum(rnd, weighted_sum, total_weight, current)
    new = {k: np.array(v, copy=True) for k, v in current.items()}
    for k, s in weighted_sum.items():
        mean = np.asarray(s, dtype=np.float64) / total_weight
        if not np.isfinite(mean).all():
            raise ValueError(f"round {rnd}: the aggregate of {k} is not finite")
        new[k] = mean.astype(new[k].dtype)
    return new


def check_sum(
    rnd: int,
    weighted_sum: Mapping[str, np.ndarray],
    total_weight: float,
    current: Mapping[str, np.ndarray],
) -> None:
    """A positive total weight, and only keys (and shapes) of the global model."""
    if not (math.isfinite(total_weight) and total_weight > 0):
        raise ValueError(f"round {rnd}: total weight must be positive, got {total_weight}")
    unknown = sorted(set(weighted_sum) - set(current))
    if unknown:
        raise ValueError(f"round {rnd}: keys not in the global model: {unknown}")
    for k, s in weighted_sum.items():
        if np.shape(s) != np.shape(current[k]):
            raise ValueError(
                f"round {rnd}: {k} has shape {np.shape(s)}, expected {np.shape(current[k])}"
            )


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


def get_strategy(name: str, **kwargs: Any) -> Strategy:
    """Build a registered strategy by name; kwargs go to its constructor."""
    try:
        cls = STRATEGIES[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown strategy {name!r}; known: {sorted(STRATEGIES)} "
            "(DP-SGD is a site training mode used with fedavg)"
        ) from None
    return cls(**kwargs)


def strategy_for(cfg, method: str) -> Strategy:
    """The strategy of ``method`` (``common/methods.py``) for a run's config (``cfg`` is taken
    through ``cfg.for_method(method)``: the method's own recipe)."""
    from common.methods import get_method

    m = get_method(method)
    try:
        cls = STRATEGIES[m.strategy]
    except KeyError:
        raise ValueError(
            f"method {method!r} names strategy {m.strategy!r}, which is not "
            f"registered; known: {sorted(STRATEGIES)}"
        ) from None
    return cls.from_config(cfg.for_method(method), m)
