"""The neighbouring relation an ε is stated for, and the Gaussian accountant of replace-one.

Every site sends its exact number of training slices n_k (the FedAvg weight, ``num_examples``,
the distributed-DP denominator). Two datasets that differ by adding or removing one slice have
different n_k, so under **add/remove** adjacency the released n_k alone tells them apart: the
relation consistent with a public n_k is **replace-one** (swap one slice for another, n_k fixed).
It is the default (``dp.adjacency``); ``add-remove`` is kept for comparison with papers that
report it, and every DP record names the relation of its ε.

Replace-one for the Poisson-subsampled Gaussian (``dpsgd``): one step releases
sum over the sampled slices of clip_C(g_i) + N(0, σ²C²). Replacing slice x by x' changes the
sampled sum by g(x) (when x is drawn) against g(x') (when x' is drawn), each of norm <= C; the
worst case is g(x') = −g(x) at norm C, so in units of C a step is the pair

    P = (1−q)·N(0, σ²) + q·N(+1, σ²),      Q = (1−q)·N(0, σ²) + q·N(−1, σ²)

(with q = 1: two Gaussians 2C apart, i.e. the sensitivity doubled: RDP 2α/σ²). Its Rényi
divergence of order α, (1/(α−1))·log ∫ p^α q^{1−α}, is integrated numerically on a grid that
covers the integrand's mass (it peaks near x = 2α − 1), composed over steps by adding, and
converted to (ε, δ) by Opacus' ``get_privacy_spent`` — the same orders and conversion as the
add/remove RDP accountant. Checked against dp-accounting's PLD accountant with ``REPLACE_ONE``
(tests/unit/test_dp_randomness.py: RDP is an upper bound, within 10% here).

The PRV accountant has no replace-one analysis here: ``dp.accountant = "prv"`` needs
``dp.adjacency = "add-remove"``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np

REPLACE_ONE, ADD_REMOVE = "replace-one", "add-remove"
ADJACENCIES = (REPLACE_ONE, ADD_REMOVE)
# Opacus' RDP accountant's default orders (opacus.accountants.RDPAccountant.DEFAULT_ALPHAS)
ORDERS: tuple[float, ...] = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))


# Below this σ the integration grid (spacing σ/50 over ~2·max(ORDERS) + 24σ) would hold more
# than ~3M points per order, and ε is astronomical anyway (2α/σ² > 32α): the q = 1 closed form,
# an upper bound for any q (subsampling never increases the divergence), stands in.
SIGMA_FLOOR = 0.25


@functools.lru_cache(maxsize=256)
def _replace_one_rdp(q: float, sigma: float) -> tuple[float, ...]:
    if q >= 1.0 or sigma < SIGMA_FLOOR:  # closed form: two Gaussians 2 apart
        return tuple((2.0 * np.asarray(ORDERS) / sigma**2).tolist())
    return rdp_integral(q, sigma)


def rdp_integral(q: float, sigma: float) -> tuple[float, ...]:
    """D_alpha(P || Q) over ``ORDERS`` by numerical integration (any q in (0, 1])."""
    a = np.asarray(ORDERS)[:, None]
    dx = sigma / 50
    x = np.arange(-12 * sigma - 1, 2 * max(ORDERS) + 12 * sigma + 1, dx)[None, :]
    log_norm = -0.5 * math.log(2 * math.pi * sigma**2)

    def mixture(shift: float) -> np.ndarray:
        rest = math.log1p(-q) if q < 1 else -math.inf
        return np.logaddexp(
            rest + log_norm - x**2 / (2 * sigma**2),
            math.log(q) + log_norm - (x - shift) ** 2 / (2 * sigma**2),
        )

    lp, lq = mixture(1.0), mixture(-1.0)
    terms = a * lp + (1 - a) * lq
    top = terms.max(axis=1, keepdims=True)
    log_int = top[:, 0] + np.log(np.exp(terms - top).sum(axis=1) * dx)
    return tuple(np.maximum(log_int / (a[:, 0] - 1), 0.0).tolist())


def replace_one_rdp(q: float, sigma: float) -> np.ndarray:
    """RDP over ``ORDERS`` of one Poisson-subsampled Gaussian step (rate ``q``, noise
    multiplier ``sigma``) under replace-one adjacency."""
    if not (0 < q <= 1 and sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"need 0 < q <= 1 and a finite sigma > 0, got q={q}, sigma={sigma}")
    return np.asarray(_replace_one_rdp(float(q), float(sigma)))


def replace_one_epsilon(history: Sequence[tuple[float, float, int]], delta: float) -> float:
    """ε at ``delta`` after the (σ, q, steps) history, replace-one adjacency (0 for none)."""
    if not history:
        return 0.0
    from opacus.accountants.analysis.rdp import get_privacy_spent

    rdp = sum(replace_one_rdp(q, s) * int(n) for s, q, n in history)
    eps, _ = get_privacy_spent(orders=list(ORDERS), rdp=np.asarray(rdp, float), delta=delta)
    return float(eps)


def replace_one_sigma(target_epsilon: float, delta: float, q: float, steps: int) -> float:
    """The smallest σ (to 0.5%) whose replace-one ε after ``steps`` steps at rate ``q`` is at
    most ``target_epsilon`` (``ValueError`` when no σ up to 5,000 reaches it)."""
    return smallest_noise(
        lambda s: replace_one_epsilon([(s, q, steps)], delta),
        target_epsilon,
        start=10.0,
        cap=5000.0,
        what=f"{steps} steps at q={q:.4g}",
    )


def smallest_noise(eps, target_epsilon: float, *, start: float, cap: float, what: str) -> float:
    """Bisection for the smallest noise scale x (to 0.5%) with ``eps(x) <= target_epsilon``,
    ``eps`` decreasing in x; ``ValueError`` naming ``what`` when no x up to ``cap`` reaches it."""
    lo, hi = 0.0, start
    while eps(hi) > target_epsilon:
        lo, hi = hi, 2 * hi
        if hi > cap:
            raise ValueError(f"target_epsilon={target_epsilon} is unreachable for {what}")
    while hi - lo > 0.005 * hi:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if eps(mid) <= target_epsilon else (mid, hi)
    return float(hi)
