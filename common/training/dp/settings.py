"""DP-SGD settings of a run and their checks: σ or a target ε, C, δ, the accountant, a budget.

Bad settings (σ ≤ 0, C ≤ 0, δ ≥ 1/N of a site, a batch larger than a site) are refused with a
message saying what to do. ``DPSettings.from_config`` is the one way to build them from a profile.
"""

from __future__ import annotations

import logging
import math
import numbers
from dataclasses import dataclass

from common.training.dp.adjacency import ADJACENCIES, REPLACE_ONE, replace_one_sigma

log = logging.getLogger(__name__)

ACCOUNTANTS = ("rdp", "prv")

# Metrics of ``dp_train_local`` that do not depend on the private data beyond what ε covers
# (or are public configuration). Everything else it returns (loss, prox, batch sizes) is a
# local, un-noised diagnostic.
PUBLIC_METRIC_KEYS = (
    "steps",
    "sample_rate",
    "noise_multiplier",
    "max_grad_norm",
    "delta",
    "epsilon",
    "accountant",
    "adjacency",
    "num_examples",
    "train_time_s",
)


class DPConfigError(ValueError):
    """A DP setting, dataset or model that DP-SGD cannot (or must not) run with."""


class PrivacyBudgetExhausted(RuntimeError):
    """The next round would push the site's ε above ``max_epsilon``: the site stops contributing.

    Raised by ``dp_train_local`` BEFORE any training, so the model and the accountant are
    unchanged. ``epsilon_spent`` is the site's ε so far, ``epsilon_next`` the ε it would have
    after the refused round.
    """

    def __init__(self, epsilon_spent: float, epsilon_next: float, max_epsilon: float, delta: float):
        self.epsilon_spent = epsilon_spent
        self.epsilon_next = epsilon_next
        self.max_epsilon = max_epsilon
        self.delta = delta
        super().__init__(
            f"privacy budget exhausted: epsilon spent {epsilon_spent:.3f}, one more round would "
            f"reach {epsilon_next:.3f} > max_epsilon {max_epsilon:g} (delta={delta:g}); this site "
            f"stops contributing updates"
        )


def check_adjacency(adjacency: str) -> str:
    """``adjacency`` if it is a neighbouring relation we account for, else ``DPConfigError``."""
    if adjacency not in ADJACENCIES:
        raise DPConfigError(f"dp.adjacency must be one of {ADJACENCIES}, got {adjacency!r}")
    return adjacency


def _positive_finite(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise DPConfigError(f"{name} must be a number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise DPConfigError(f"{name} must be a finite number > 0, got {value!r}")


@dataclass(frozen=True)
class DPSettings:
    """Privacy parameters of the ``dpsgd`` method (checked on construction).

    Give exactly one of ``noise_multiplier`` (σ) and ``target_epsilon``: with ``target_epsilon``
    set ``noise_multiplier=None`` and call ``resolve_noise_multiplier`` once before training.
    ``max_epsilon`` is a budget after which a site stops contributing (``PrivacyBudgetExhausted``).
    """

    noise_multiplier: float | None = 1.2
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    accountant: str = "rdp"
    target_epsilon: float | None = None
    max_epsilon: float | None = None
    adjacency: str = "replace-one"  # common.training.dp.adjacency: what ε is stated for

    @classmethod
    def from_config(cls, dp) -> DPSettings:
        """The settings of a profile's ``[dp]`` section (``common.config.DPConfig``)."""
        return cls(
            noise_multiplier=dp.noise_multiplier,
            max_grad_norm=dp.max_grad_norm,
            delta=dp.delta,
            accountant=dp.accountant,
            target_epsilon=dp.target_epsilon,
            max_epsilon=dp.max_epsilon,
            adjacency=dp.adjacency,
        )

    def run_sigma(self, n_site: int, batch_size: int, rounds: int, local_epochs: int) -> float:
        """σ for a site of ``n_site`` slices training ``rounds`` × ``local_epochs`` epochs (checked
        against the site first): ``noise_multiplier``, or the σ that reaches ``target_epsilon``."""
        validate_dp(self, n_site, batch_size)
        steps = rounds * local_epochs * dp_steps_per_epoch(n_site, batch_size)
        return resolve_noise_multiplier(
            self, sample_rate=sample_rate_for(n_site, batch_size), steps_total=steps
        )

    def __post_init__(self) -> None:
        if self.target_epsilon is None and self.noise_multiplier is None:
            raise DPConfigError(
                "give noise_multiplier (sigma, e.g. 1.2) or target_epsilon (sigma is then "
                "computed for the whole run)"
            )
        if self.target_epsilon is not None and self.noise_multiplier is not None:
            raise DPConfigError(
                f"both noise_multiplier={self.noise_multiplier} and target_epsilon="
                f"{self.target_epsilon} are set; set noise_multiplier=None to let target_epsilon "
                f"choose sigma, or drop target_epsilon"
            )
        if self.noise_multiplier is not None:
            if isinstance(self.noise_multiplier, numbers.Real) and self.noise_multiplier <= 0:
                raise DPConfigError(
                    f"noise_multiplier (sigma) must be > 0, got {self.noise_multiplier}: "
                    f"sigma <= 0 adds no noise and gives no privacy (epsilon = infinity). For a "
                    f"run without DP use the 'groupnorm' method; otherwise use e.g. sigma=1.2"
                )
            _positive_finite("noise_multiplier (sigma)", self.noise_multiplier)
        if isinstance(self.max_grad_norm, numbers.Real) and self.max_grad_norm <= 0:
            raise DPConfigError(
                f"max_grad_norm (C) must be > 0, got {self.max_grad_norm}: it bounds each "
                f"slice's gradient and scales the noise (std = sigma * C); the usual value is 1.0"
            )
        _positive_finite("max_grad_norm (C)", self.max_grad_norm)
        _positive_finite("delta", self.delta)
        if self.delta >= 1:
            raise DPConfigError(f"delta must be < 1 (and < 1/N_site), got {self.delta}")
        if self.accountant not in ACCOUNTANTS:
            raise DPConfigError(f"accountant must be one of {ACCOUNTANTS}, got {self.accountant!r}")
        if check_adjacency(self.adjacency) == REPLACE_ONE and self.accountant != "rdp":
            raise DPConfigError(
                f"the {self.accountant!r} accountant has no replace-one analysis here: use "
                "dp.accountant = 'rdp', or dp.adjacency = 'add-remove' (which does not cover the "
                "n_k every site releases)"
            )
        if self.target_epsilon is not None:
            _positive_finite("target_epsilon", self.target_epsilon)
        if self.max_epsilon is not None:
            _positive_finite("max_epsilon", self.max_epsilon)


def sample_rate_for(n_site: int, batch_size: int) -> float:
    """Poisson sampling rate q = batch_size / N (the expected batch size is batch_size)."""
    return batch_size / n_site


def dp_steps_per_epoch(n_site: int, batch_size: int) -> int:
    """Steps of one local epoch: ceil(N / batch_size), as many as the non-DP loader."""
    return math.ceil(n_site / batch_size)


def validate_dp(settings: DPSettings, n_site: int, batch_size: int) -> None:
    """Refuse a site and batch size that DP-SGD cannot honestly run with."""
    if not isinstance(settings, DPSettings):
        raise DPConfigError(f"expected DPSettings, got {type(settings).__name__}")
    if isinstance(n_site, bool) or not isinstance(n_site, int) or n_site < 1:
        raise DPConfigError(f"the site needs at least one training slice, got N={n_site!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DPConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if batch_size > n_site:
        raise DPConfigError(
            f"batch_size {batch_size} is larger than the site's {n_site} training slices: the "
            f"Poisson sampling rate batch_size/N would exceed 1. Use batch_size <= {n_site}"
        )
    if settings.delta >= 1.0 / n_site:
        raise DPConfigError(
            f"delta={settings.delta:g} must be < 1/N_site = {1.0 / n_site:.3g} (N={n_site}): "
            f"a delta of 1/N allows leaking one whole record. Use delta <= {0.1 / n_site:.1g} "
            f"(e.g. the default 1e-5)"
        )


def resolve_noise_multiplier(
    settings: DPSettings, *, sample_rate: float, steps_total: int
) -> float:
    """σ for the run: ``settings.noise_multiplier``, or the smallest σ (binary search to 0.01 in
    ε) whose ε after ``steps_total`` steps at ``sample_rate`` is at most ``target_epsilon``, under
    ``settings.adjacency`` (replace-one: ``adjacency.replace_one_sigma``; add/remove: Opacus'
    ``get_noise_multiplier`` for ``settings.accountant``) at ``settings.delta``.

    ``steps_total`` = rounds × local_epochs × ``dp_steps_per_epoch(N, batch_size)``. The result
    is deterministic, so a restarted site recomputes the same σ.
    """
    if settings.noise_multiplier is not None:
        return float(settings.noise_multiplier)
    if not (0 < sample_rate <= 1):
        raise DPConfigError(f"sample_rate must be in (0, 1], got {sample_rate}")
    if isinstance(steps_total, bool) or not isinstance(steps_total, int) or steps_total < 1:
        raise DPConfigError(f"steps_total must be a positive integer, got {steps_total!r}")
    from opacus.accountants.utils import get_noise_multiplier

    if settings.adjacency == REPLACE_ONE:
        try:
            sigma = replace_one_sigma(
                settings.target_epsilon, settings.delta, sample_rate, steps_total
            )
        except ValueError as e:
            raise DPConfigError(f"{e}. Raise target_epsilon, or train fewer rounds/epochs") from e
        log.info(
            "target_epsilon %.3g (replace-one) over %d steps at q=%.4g (delta=%g): sigma=%.4f",
            settings.target_epsilon,
            steps_total,
            sample_rate,
            settings.delta,
            sigma,
        )
        return sigma
    try:
        sigma = get_noise_multiplier(
            target_epsilon=settings.target_epsilon,
            target_delta=settings.delta,
            sample_rate=sample_rate,
            steps=steps_total,
            accountant=settings.accountant,
            epsilon_tolerance=0.01,
        )
    except ValueError as e:  # Opacus: "The privacy budget is too low."
        raise DPConfigError(
            f"target_epsilon={settings.target_epsilon} is unreachable for {steps_total} steps at "
            f"q={sample_rate:.4g}: {e}. Raise target_epsilon, or train fewer rounds/epochs"
        ) from e
    log.info(
        "target_epsilon %.3g over %d steps at q=%.4g (%s, delta=%g): sigma=%.4f",
        settings.target_epsilon,
        steps_total,
        sample_rate,
        settings.accountant,
        settings.delta,
        sigma,
    )
    return float(sigma)
