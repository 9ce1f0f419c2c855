"""The calibrated rungs: LiRA (Carlini et al., S&P 2022) and RMIA (Zarifzadeh et al., ICML 2024).

Both compare the target's confidence on a candidate with reference (shadow) models' confidence on
the same candidate, so a slice that is easy (or hard) for every model is not mistaken for a
member (or non-member). Everything is per image, read from the per-pixel output over the tumour
and a ``LIRA_RING_PX`` ring around it (the whole slice when it has no tumour): memorisation shows
on tumour and boundary pixels, the far background is easy for every model and only adds variance
(He et al., ECCV 2020).

Signals are (n_views, N) arrays (``attacks.views``: the candidate and its flipped/shifted copies);
the per-view scores are averaged in log space, as LiRA averages over augmentations.

- Offline (the black-box attacker): the candidates are never in the attacker's pool, so every
  shadow is an OUT (reference) model for every candidate.
- Online (``attacks.auditor``): the auditor's shadows include half of the candidates each, so a
  candidate has IN and OUT models.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm

from attacks.features import pixel_maps, tumour_region

LIRA_RING_PX = 3  # the statistic's region: the tumour and this many pixels around it
RMIA_A_GRID = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))
RMIA_A_FALLBACK = 0.5  # with one shadow nothing is left to calibrate on: the grid's midpoint


def _region_mean(values: np.ndarray, masks: np.ndarray) -> np.ndarray:
    n = len(values)
    flat = values.reshape(n, -1)
    region = tumour_region(masks, LIRA_RING_PX).reshape(n, -1)
    count = region.sum(axis=1)
    inside = np.divide((flat * region).sum(axis=1), count, out=np.zeros(n), where=count > 0)
    return np.where(count > 0, inside, flat.mean(axis=1))


def lira_signal(probs: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per-image LiRA statistic: the mean logit-scaled confidence on the true label,
    φ = log p_y − log(1 − p_y) (probabilities clipped, see ``attacks.features``), over the tumour
    and its ring — the whole slice when it has no tumour.

    Measured on the standard profile's FedAvg target: AUC 0.630 → 0.655 (tumour + ring instead of
    the whole slice) with one shadow federation, 0.681 → 0.702 with three (docs/results.md)."""
    m = pixel_maps(probs, masks)
    return _region_mean(m["phi"], m["g"])


def rmia_signal(probs: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per-image likelihood Pr(x | θ) for RMIA: the geometric mean of the per-pixel probability of
    the true label over the same region (exp of minus the mean cross-entropy), in (0, 1]."""
    m = pixel_maps(probs, masks)
    return np.exp(-_region_mean(m["bce"], m["g"]))


def _views(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a[None] if a.ndim == 1 else a


# ---------------------------------------------------------------------------------------------
# LiRA


def _pooled_sd(values: np.ndarray, use: np.ndarray) -> float:
    """One global standard deviation (LiRA's "fixed variance", the stable choice with few
    models): the pooled within-candidate spread of ``values`` (S, N) over entries ``use``, or
    their plain spread when no candidate has two of them."""
    counts = use.sum(axis=0)
    mu = np.divide(
        np.where(use, values, 0).sum(axis=0),
        counts,
        out=np.zeros(values.shape[1]),
        where=counts > 0,
    )
    dof = int(counts.sum() - (counts > 0).sum())
    if dof > 0:
        sd = float(np.sqrt((np.where(use, values - mu, 0.0) ** 2).sum() / dof))
    else:
        sd = float(values[use].std()) if use.any() else 0.0
    return max(sd, 1e-6)


def _dof(use: np.ndarray) -> bool:
    """Whether some candidate has two references in ``use`` (S, N): a within-candidate spread."""
    counts = use.sum(axis=0)
    return int(counts.sum() - (counts > 0).sum()) > 0


def lira_offline(target: np.ndarray, reference: np.ndarray, out: np.ndarray | None = None):
    """Offline one-sided LiRA: mean over views of log P(φ_ref <= φ_target) under
    N(μ_out(x), σ²). ``target`` (V, N) or (N,); ``reference`` (S, V, N) or (S, N); ``out``
    (S, N) bool: which references are OUT for each candidate (default all). A candidate with no
    OUT reference scores with the mean over all references."""
    t = _views(target)
    ref = np.asarray(reference, dtype=np.float64)
    ref = ref[:, None] if ref.ndim == 2 else ref
    use = np.ones((ref.shape[0], ref.shape[2]), bool) if out is None else np.asarray(out, bool)
    use = np.where(use.any(axis=0), use, True)
    scores = []
    for v in range(t.shape[0]):
        r = ref[:, v]
        mu = np.where(use, r, 0).sum(axis=0) / use.sum(axis=0)
        scores.append(norm.logcdf((t[v] - mu) / _pooled_sd(r, use)))
    return np.mean(scores, axis=0)


def lira_online(target: np.ndarray, reference: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Online LiRA: mean over views of log N(φ; μ_in, σ_in²) − log N(φ; μ_out, σ_out²), with
    per-candidate means over the IN and OUT references (``inside`` (S, N) bool) and global
    (fixed) variances, one common variance when a side has a single reference per candidate.
    Every candidate needs at least one IN and one OUT reference."""
    t = _views(target)
    ref = np.asarray(reference, dtype=np.float64)
    ref = ref[:, None] if ref.ndim == 2 else ref
    inside = np.asarray(inside, bool)
    if not (inside.any(axis=0).all() and (~inside).any(axis=0).all()):
        raise ValueError("online LiRA needs an IN and an OUT reference model for every candidate")
    scores = []
    for v in range(t.shape[0]):
        r = ref[:, v]
        mu_in = np.where(inside, r, 0).sum(axis=0) / inside.sum(axis=0)
        mu_out = np.where(~inside, r, 0).sum(axis=0) / (~inside).sum(axis=0)
        sd_in, sd_out = _pooled_sd(r, inside), _pooled_sd(r, ~inside)
        if not (_dof(inside) and _dof(~inside)):
            # one IN or one OUT model per candidate: no spread to estimate on that side, and two
            # unequal fallback spreads make the ratio quadratic in φ (members scored below
            # non-members, AUC 0.19-0.83 over 5 seeds with 2 shadows); one common σ (fixed
            # variance) keeps the test monotone in φ along μ_in − μ_out
            sd_in = sd_out = float(np.sqrt((sd_in**2 + sd_out**2) / 2))
        scores.append(norm.logpdf(t[v], mu_in, sd_in) - norm.logpdf(t[v], mu_out, sd_out))
    return np.mean(scores, axis=0)


# ---------------------------------------------------------------------------------------------
# RMIA


def _log_ratio(target: np.ndarray, reference: np.ndarray, use: np.ndarray, a: float | None):
    """Mean over views of log Pr(x|θ) − log Pr(x), with Pr(x) the mean of the references in
    ``use`` (S, N); offline (``a`` given): Pr(x) = ((1 + a)·Pr_out(x) + 1 − a) / 2, RMIA's
    linear approximation of the missing IN models."""
    t = np.clip(_views(target), 1e-12, None)
    ref = np.asarray(reference, dtype=np.float64)
    ref = ref[:, None] if ref.ndim == 2 else ref
    use = np.where(use.any(axis=0), use, True)
    out = []
    for v in range(t.shape[0]):
        px = np.where(use, ref[:, v], 0).sum(axis=0) / use.sum(axis=0)
        if a is not None:
            px = ((1 + a) * px + (1 - a)) / 2
        out.append(np.log(t[v]) - np.log(np.clip(px, 1e-12, None)))
    return np.mean(out, axis=0)


def rmia_scores(
    target_x: np.ndarray,
    reference_x: np.ndarray,
    target_z: np.ndarray,
    reference_z: np.ndarray,
    *,
    gamma: float = 1.0,
    a: float | None = None,
    use_x: np.ndarray | None = None,
    use_z: np.ndarray | None = None,
) -> np.ndarray:
    """RMIA: the fraction of population samples z whose likelihood ratio the candidate x
    dominates by more than ``gamma``: score(x) = mean_z 1[(Pr(x|θ)/Pr(x)) / (Pr(z|θ)/Pr(z)) > γ],
    in [0, 1], with ties broken by x's own ratio (the score is (count + sigmoid(log ratio −
    log γ)) / (|z| + 1): the same order as the fraction wherever the fraction differs). ``a`` given: offline (references are OUT models, ``use_*`` picks which are OUT per
    slice); ``a`` None: online (Pr(x) is the mean over all references, IN and OUT alike).
    Signals are ``rmia_signal`` values, (V, N) / (S, V, N) or without the view axis."""
    if gamma <= 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    rx, rz = np.asarray(reference_x), np.asarray(reference_z)
    ux = np.ones((rx.shape[0], rx.shape[-1]), bool) if use_x is None else np.asarray(use_x, bool)
    uz = np.ones((rz.shape[0], rz.shape[-1]), bool) if use_z is None else np.asarray(use_z, bool)
    lx = _log_ratio(target_x, rx, ux, a)
    lz = np.sort(_log_ratio(target_z, rz, uz, a))
    if not len(lz):
        raise ValueError("RMIA needs population samples z")
    # count of z with lx - lz > log(gamma), i.e. lz < lx - log(gamma), by binary search
    margin = lx - np.log(gamma)
    count = np.searchsorted(lz, margin, side="left")
    # Ties: with a few hundred z, many candidates beat every z (or none) and share the score 1
    # (or 0), which flattens the ROC exactly where TPR at low FPR is read. The count is a step
    # function of the candidate's own log ratio, so adding sigmoid(margin) in (0, 1) breaks the
    # ties by that ratio without reordering any two candidates the count already separates.
    return (count + 1.0 / (1.0 + np.exp(-np.clip(margin, -50, 50)))) / (len(lz) + 1)


def calibrate_a(pairs, auc, grid=RMIA_A_GRID) -> tuple[float, dict[float, float]]:
    """RMIA's offline ``a``: the grid value that maximises the mean AUC over ``pairs``, each a
    (kwargs for ``rmia_scores`` without ``a``, membership labels) built from a shadow playing the
    target and the other shadows as references. Returns (a, {a: mean AUC})."""
    table = {}
    for a in grid:
        table[float(a)] = float(np.mean([auc(rmia_scores(**kw, a=float(a)), y) for kw, y in pairs]))
    best = max(table, key=lambda k: (table[k], -abs(k - RMIA_A_FALLBACK)))
    return best, table
