"""Audit metrics of a membership-inference attack: AUC with a bootstrap CI, TPR at low FPR, the
per-site breakdown, the DP ceiling, and a log-log ROC plot.

Conventions: ``scores`` are continuous, higher = member (never rounded 0/1 predictions: an "AUC"
of hard labels is a balanced accuracy). ``is_member`` is 1 for members, 0 for non-members.

- AUC: ``sklearn.metrics.roc_auc_score``. The 95% CI is a percentile bootstrap that resamples
  members and non-members separately (stratified, so every replicate has both classes).
- TPR at FPR x: the TPR of the best threshold whose FPR is <= x (the convention of LiRA's and ML
  Privacy Meter's plots). With N non-members the smallest non-zero FPR is 1/N, so TPR@0.1% FPR is
  reported only when there are >= 1,000 non-members (else None, "not estimable").
- Guard: an AUC below 0.5 whose CI excludes 0.5 means a broken attack (inverted score, or a
  member/non-member split from different distributions), never privacy: ``error`` is set.
- DP ceiling: under (ε, δ)-DP every test obeys TPR <= e^ε·FPR + δ and, symmetrically,
  1 − FPR <= e^ε·(1 − TPR) + δ. ``dp_ceiling`` gives min(1, e^ε·FPR + δ) at the reported FPRs
  and the largest AUC both constraints allow.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

log = logging.getLogger(__name__)

FPR_POINTS = {"tpr_at_1pct_fpr": 0.01, "tpr_at_0.1pct_fpr": 0.001}
MIN_NONMEMBERS_0P1 = 1000  # TPR@0.1% FPR needs at least 1 / 0.001 non-members
BROKEN_ATTACK = "attack broken: score direction or member/non-member split"


def _check(scores: np.ndarray, is_member: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(is_member)
    if scores.ndim != 1 or labels.shape != scores.shape:
        raise ValueError(
            f"scores and is_member must be 1-D and the same length, got {scores.shape} and "
            f"{labels.shape}"
        )
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf: the attack produced invalid scores")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("is_member must be 0/1 (or bool)")
    labels = labels.astype(bool)
    if labels.all() or not labels.any():
        raise ValueError(
            f"need both members and non-members, got {int(labels.sum())} members and "
            f"{int((~labels).sum())} non-members"
        )
    return scores, labels


def rank_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann-Whitney AUC (ties count 1/2); equals ``roc_auc_score`` and is cheap to bootstrap."""
    labels = np.asarray(labels, dtype=bool)
    n1, n0 = int(labels.sum()), int((~labels).sum())
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def tpr_at_fpr(scores: np.ndarray, labels: np.ndarray, fpr: float) -> float:
    """Highest TPR over thresholds whose FPR is <= ``fpr``."""
    from sklearn.metrics import roc_curve

    fprs, tprs, _ = roc_curve(labels, scores)
    ok = fprs <= fpr + 1e-12
    return float(tprs[ok].max()) if ok.any() else 0.0


def bootstrap_auc_ci(
    scores: np.ndarray, labels: np.ndarray, n_boot: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Percentile 95% CI of the AUC, resampling members and non-members separately."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    pos, neg = scores[labels], scores[~labels]
    y = np.r_[np.ones(len(pos), bool), np.zeros(len(neg), bool)]
    aucs = np.empty(n_boot)
    for b in range(n_boot):
        s = np.r_[rng.choice(pos, len(pos)), rng.choice(neg, len(neg))]
        aucs[b] = rank_auc(s, y)
    lo, hi = np.percentile(aucs, [2.5, 97.5])
    return float(lo), float(hi)


def dp_tpr_ceiling(fpr: float, epsilon: float, delta: float = 0.0) -> float:
    """The DP bound on TPR at ``fpr``: min(1, e^ε·FPR + δ) (Kairouz et al.; the issue's ceiling).

    The symmetric constraint 1 − FPR <= e^ε·(1 − TPR) + δ can be slightly tighter (by at most
    e^−ε); ``dp_auc_ceiling`` uses both."""
    if epsilon < 0 or delta < 0:
        raise ValueError(f"epsilon and delta must be >= 0, got {epsilon}, {delta}")
    return float(min(1.0, math.exp(epsilon) * fpr + delta))


def dp_auc_ceiling(epsilon: float, delta: float = 0.0, grid: int = 20001) -> float:
    """Largest AUC allowed by both (ε, δ)-DP constraints (area under the ceiling curve)."""
    f = np.linspace(0.0, 1.0, grid)
    e = math.exp(epsilon)
    t = np.clip(np.minimum(np.minimum(1.0, e * f + delta), 1.0 - (1.0 - delta - f) / e), 0.0, 1.0)
    return float(((t[1:] + t[:-1]) * np.diff(f)).sum() / 2)  # trapezoid rule (numpy 1.x and 2.x)


def audit_metrics(
    scores: np.ndarray,
    is_member: np.ndarray,
    *,
    sites: np.ndarray | None = None,
    epsilon: float | None = None,
    delta: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """Score an attack's output against the ground truth (the benchmark's job, not the attacker's).

    Returns ``auc``, ``auc_ci95`` [lo, hi], ``tpr_at_1pct_fpr``, ``tpr_at_0.1pct_fpr`` (None with
    fewer than 1,000 non-members), ``advantage`` (max TPR − FPR), ``n_members``, ``n_nonmembers``,
    ``per_site`` ({site: {auc, n_members, n_nonmembers}}; auc None when a site lacks a class),
    ``dp_ceiling`` (None unless ``epsilon`` is given) and ``error`` (None, or why the attack is
    broken).
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    s, y = _check(scores, is_member)
    n1, n0 = int(y.sum()), int((~y).sum())
    auc = float(roc_auc_score(y, s))
    lo, hi = bootstrap_auc_ci(s, y, n_boot=n_boot, seed=seed)
    fprs, tprs, _ = roc_curve(y, s)
    out: dict = {
        "auc": auc,
        "auc_ci95": [lo, hi],
        "tpr_at_1pct_fpr": tpr_at_fpr(s, y, 0.01),
        "tpr_at_0.1pct_fpr": tpr_at_fpr(s, y, 0.001) if n0 >= MIN_NONMEMBERS_0P1 else None,
        "advantage": float(np.max(tprs - fprs)),
        "n_members": n1,
        "n_nonmembers": n0,
        "per_site": {},
        "dp_ceiling": None,
        "error": None,
    }
    if sites is not None:
        sites = np.asarray(sites)
        if sites.shape != s.shape:
            raise ValueError(f"sites must have the scores' shape {s.shape}, got {sites.shape}")
        for site in sorted(np.unique(sites).tolist()):
            sel = sites == site
            m, nm = int(y[sel].sum()), int((~y[sel]).sum())
            site_auc = rank_auc(s[sel], y[sel]) if m and nm else None
            out["per_site"][str(site)] = {"auc": site_auc, "n_members": m, "n_nonmembers": nm}
    if epsilon is not None:
        d = 0.0 if delta is None else float(delta)
        ceiling = {k: dp_tpr_ceiling(f, epsilon, d) for k, f in FPR_POINTS.items()}
        if out["tpr_at_0.1pct_fpr"] is None:
            ceiling["tpr_at_0.1pct_fpr"] = None
        out["dp_ceiling"] = {
            **ceiling,
            "auc": dp_auc_ceiling(epsilon, d),
            "epsilon": float(epsilon),
            "delta": d,
        }
    if auc < 0.5 and hi < 0.5:
        out["error"] = (
            f"{BROKEN_ATTACK}: AUC {auc:.3f} is below chance and its 95% CI [{lo:.3f}, "
            f"{hi:.3f}] excludes 0.5; this is not privacy"
        )
        log.error(out["error"])
    return out


def roc_plot(results: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path) -> None:
    """Log-log ROC (LiRA style), one curve per attack: ``{name: (scores, is_member)}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    floor = 1.0
    for name, (scores, is_member) in results.items():
        s, y = _check(scores, is_member)
        fprs, tprs, _ = roc_curve(y, s)
        floor = min(floor, 1.0 / max(1, int((~y).sum())))
        ax.plot(fprs, tprs, label=f"{name} (AUC {roc_auc_score(y, s):.3f})")
    floor = max(floor / 2, 1e-5)
    grid = np.logspace(math.log10(floor), 0, 100)
    ax.plot(grid, grid, "k--", lw=0.8, label="chance")
    ax.set(xscale="log", yscale="log", xlim=(floor, 1), ylim=(floor, 1.05))
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="MIA ROC (log-log)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
