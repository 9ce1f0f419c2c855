"""Privacy accounting of the distributed Skellam mechanism (method ``ddp-sgd``).

One DP-SGD step of ``ddp-sgd`` releases, to the server and to whoever gets the model,

    sum over the union of the sites' Poisson batches (rate q) of round(s * clip_C(g_i))
      + Skellam noise of variance mu per coordinate,

an integer vector (the sites' noise shares add up: a sum of independent Skellams is Skellam).
Adding or removing one slice changes the sum by one rounded, clipped, scaled gradient, whose
norms are bounded by (nearest rounding moves each of the d coordinates by at most 1/2)

    Delta2 = s*C + sqrt(d)/2,        Delta1 = min(sqrt(d) * Delta2, Delta2**2)

(the second bound of Delta1: an integer vector has |v_i| <= v_i**2).

- **Skellam RDP** (Agarwal, Kairouz, Liu, NeurIPS 2021, Theorem 3.5), integer alpha > 1:
  ``eps(alpha) <= alpha*Delta2**2/(2 mu) + min(((2 alpha - 1) Delta2**2 + 6 Delta1)/(4 mu**2),
  3 Delta1/(2 mu))``; for large mu it tends to the Gaussian's alpha/(2 sigma**2) with
  sigma = sqrt(mu)/Delta2.
- **Poisson subsampling** (Zhu and Wang, ICML 2019, Theorem 6: the general upper bound for any
  mechanism with an RDP curve), integer alpha >= 2.
- **Composition** adds RDP over rounds; the conversion to (eps, delta) is Opacus'
  (``opacus.accountants.analysis.rdp.get_privacy_spent``).

- **Replace-one adjacency** (the default, ``common.training.dp.adjacency``: every site's n_k is
  public): replacing one slice changes the sum by the difference of two rounded clipped
  gradients, so with q = 1 the base mechanism's sensitivities double (2*Delta1, 2*Delta2: exact,
  not a bound). With q < 1 the replace-one RDP of order alpha is bounded by Mironov's weak
  triangle inequality through the dataset without the slice (RDP 2017, Prop. 11):
  ``(alpha - 1/2)/(alpha - 1) * eps_AR(2 alpha) + eps_AR(2 alpha - 1)``, the add/remove curves
  being Zhu-Wang's.

Everything is a function of what a round records (q, mu, Delta1, Delta2), so anyone can recompute
a run's epsilon from its history (``epsilon_of``).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from common.training.dp.adjacency import ADD_REMOVE, REPLACE_ONE, smallest_noise
from common.training.dp.settings import DPConfigError, check_adjacency

ORDERS: tuple[int, ...] = tuple(range(2, 65)) + (80, 96, 128, 160, 192, 256)


def sensitivities(scale: float, clip: float, dim: int) -> tuple[float, float]:
    """(Delta1, Delta2) of one rounded, clipped, scaled per-slice gradient in ``dim`` coordinates."""
    if not (scale > 0 and clip > 0 and dim >= 1):
        raise DPConfigError(f"need scale > 0, clip > 0, dim >= 1; got {scale}, {clip}, {dim}")
    d2 = scale * clip + math.sqrt(dim) / 2
    return min(math.sqrt(dim) * d2, d2 * d2), d2


def skellam_rdp(alpha: int, mu: float, delta1: float, delta2: float) -> float:
    """RDP of order ``alpha`` of the Skellam mechanism of variance ``mu`` (Theorem 3.5)."""
    a = float(alpha)
    extra = min(((2 * a - 1) * delta2**2 + 6 * delta1) / (4 * mu**2), 3 * delta1 / (2 * mu))
    return a * delta2**2 / (2 * mu) + extra


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def subsampled_rdp(alpha: int, q: float, rdp) -> float:
    """Zhu-Wang's upper bound on the RDP of order ``alpha`` of the Poisson-subsampled (rate q)
    mechanism whose RDP curve is ``rdp(order)``; the mechanism's own RDP when q = 1."""
    if not (isinstance(alpha, int) and alpha >= 2):
        raise DPConfigError(f"orders must be integers >= 2, got {alpha!r}")
    if not 0 < q <= 1:
        raise DPConfigError(f"the sampling rate must be in (0, 1], got {q}")
    if q == 1:
        return rdp(alpha)
    lq, l1q = math.log(q), math.log1p(-q)
    terms = [(alpha - 1) * l1q + math.log(alpha * q - q + 1)]
    terms.append(_log_comb(alpha, 2) + 2 * lq + (alpha - 2) * l1q + rdp(2))
    for j in range(3, alpha + 1):
        terms.append(
            math.log(3) + _log_comb(alpha, j) + (alpha - j) * l1q + j * lq + (j - 1) * rdp(j)
        )
    top = max(terms)
    log_sum = top + math.log(sum(math.exp(t - top) for t in terms))
    return min(log_sum / (alpha - 1), rdp(alpha))


def round_rdp(
    q: float,
    mu: float,
    delta1: float,
    delta2: float,
    orders: Sequence[int] = ORDERS,
    adjacency: str = REPLACE_ONE,
) -> np.ndarray:
    """The RDP curve (over ``orders``) of one round: a Skellam release of variance ``mu`` over a
    Poisson sample at rate ``q``, for ``adjacency`` (module docstring)."""
    if not (mu > 0 and math.isfinite(mu)):
        raise DPConfigError(f"the noise variance mu must be positive and finite, got {mu}")
    if check_adjacency(adjacency) == REPLACE_ONE:
        if q == 1:  # the difference of two rounded clipped gradients: sensitivities doubled
            return round_rdp(q, mu, 2 * delta1, 2 * delta2, orders, ADD_REMOVE)
        return np.array(
            [
                (a - 0.5) / (a - 1) * _ar(2 * a, q, mu, delta1, delta2)
                + _ar(2 * a - 1, q, mu, delta1, delta2)
                for a in orders
            ]
        )
    return np.array([_ar(int(a), q, mu, delta1, delta2) for a in orders])


def _ar(alpha: int, q: float, mu: float, delta1: float, delta2: float) -> float:
    """Add/remove RDP of order ``alpha`` of one subsampled Skellam round."""
    return subsampled_rdp(int(alpha), q, lambda a: skellam_rdp(a, mu, delta1, delta2))


def epsilon_from_rdp(rdp: np.ndarray, delta: float, orders: Sequence[int] = ORDERS) -> float:
    from opacus.accountants.analysis.rdp import get_privacy_spent

    eps, _ = get_privacy_spent(orders=list(orders), rdp=np.asarray(rdp, float), delta=delta)
    return float(eps)


def epsilon_of(rounds: Iterable[Mapping], delta: float, adjacency: str = REPLACE_ONE) -> float:
    """ε after the recorded rounds (each {q, mu, delta1, delta2}: what ``ddp-sgd`` stores in a
    round's history), for ``adjacency``; 0 for none."""
    counts = Counter(
        (float(r["q"]), float(r["mu"]), float(r["delta1"]), float(r["delta2"])) for r in rounds
    )  # (a run's rounds repeat a few mechanisms)
    if not counts:
        return 0.0
    total = sum(n * round_rdp(*mech, adjacency=adjacency) for mech, n in counts.items())
    return epsilon_from_rdp(total, delta)


def noise_for_epsilon(
    target_epsilon: float,
    delta: float,
    q: float,
    steps: int,
    delta1: float,
    delta2: float,
    adjacency: str = REPLACE_ONE,
) -> float:
    """The smallest mu (to 0.5% in sigma = sqrt(mu)/Delta2) whose ε after ``steps`` rounds at rate
    ``q`` is at most ``target_epsilon`` under ``adjacency``."""
    if not (target_epsilon > 0 and steps >= 1):
        raise DPConfigError(
            f"need target_epsilon > 0 and steps >= 1, got {target_epsilon}, {steps}"
        )

    def eps(sigma: float) -> float:
        mu = (sigma * delta2) ** 2
        return epsilon_from_rdp(
            round_rdp(q, mu, delta1, delta2, adjacency=adjacency) * steps, delta
        )

    try:
        hi = smallest_noise(
            eps, target_epsilon, start=1.0, cap=1e4, what=f"{steps} steps at q={q:.4g}"
        )
    except ValueError as err:
        raise DPConfigError(str(err)) from None
    return (hi * delta2) ** 2
