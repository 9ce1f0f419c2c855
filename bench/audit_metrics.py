"""Audit metrics of a membership-inference attack: AUC with a bootstrap CI, TPR at low FPR with
an exact CI, the per-site breakdown, the DP ceiling as a binomial test, and a log-log ROC plot.

Conventions: ``scores`` are continuous, higher = member (never rounded 0/1 predictions: an "AUC"
of hard labels is a balanced accuracy). ``is_member`` is 1 for members, 0 for non-members.

- AUC: ``sklearn.metrics.roc_auc_score``. The 95% CI is a percentile bootstrap that resamples
  members and non-members separately (stratified, so every replicate has both classes).
- TPR at FPR x: the TPR of the lowest threshold with at most k = ⌊x·N0⌋ false positives among the
  N0 non-members (the best threshold whose FPR is <= x: the convention of LiRA's and ML Privacy
  Meter's plots), with an exact Clopper–Pearson 95% CI over the N1 members (``clopper_pearson``),
  the threshold, and the false positives it lets through (``tpr_point``). With N non-members the
  smallest non-zero FPR is 1/N, so TPR@0.1% FPR is reported only with >= 1,000 non-members
  (else None, "not estimable"); TPR@10% FPR is always reported (200 non-members support it).
- Guard: an AUC below 0.5 whose CI excludes 0.5 means a broken attack (inverted score, or a
  member/non-member split from different distributions), never privacy: ``error`` is set.
- DP ceiling: under (ε, δ)-DP every test obeys TPR <= e^ε·FPR + δ and, symmetrically,
  1 − FPR <= e^ε·(1 − TPR) + δ. ``dp_ceiling`` gives min(1, e^ε·x + δ) at the nominal FPRs x
  and the largest AUC both constraints allow, and ``dp_ceiling_test`` a one-sided binomial test
  of TPR <= e^ε·FPR + δ at the recorded threshold (see there) wherever N0 >= 10 / x.
- Patient level (a dataset that records case ids: ``fedonco data import``): a case's score is
  the mean of its candidate slice scores, a case is a member when its slices are train slices
  (each case lies in one split; ``case_scores`` refuses one that does not); AUC and its CI as
  above over the cases, TPR at FPR x only with >= 1 / x non-member cases (``patient_level``).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

log = logging.getLogger(__name__)

FPR_POINTS = {"tpr_at_10pct_fpr": 0.1, "tpr_at_1pct_fpr": 0.01, "tpr_at_0.1pct_fpr": 0.001}
MIN_NONMEMBERS_0P1 = 1000  # TPR@0.1% FPR needs at least 1 / 0.001 non-members
CEILING_SUPPORT = 10  # the DP-ceiling test at FPR x needs >= 10 / x non-members (1,000 for 1%)
ALPHA = 0.05  # the ceiling test's level: α/2 for the FPR's upper bound + α/2 for the TPR test
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


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper–Pearson) two-sided interval of a binomial proportion k / n: the beta
    quantiles B(a/2; k, n-k+1) and B(1-a/2; k+1, n-k) (``scipy.special.betaincinv``). Equal to
    ``scipy.stats.binomtest(...).proportion_ci(method="exact")`` within 1e-12 (its root finder's
    tolerance; tested) and ~1,000x faster, which the audit's many TPR points and the ceiling
    test's seeds add up."""
    from scipy.special import betaincinv

    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    a = (1.0 - confidence) / 2
    lo = 0.0 if k == 0 else float(betaincinv(k, n - k + 1, a))
    hi = 1.0 if k == n else float(betaincinv(k + 1, n - k, 1.0 - a))
    return lo, hi


def tpr_point(scores: np.ndarray, labels: np.ndarray, fpr: float) -> dict:
    """TPR at nominal FPR ``fpr``: the lowest threshold that lets through at most
    k = ⌊fpr·N0⌋ non-members, i.e. the lowest score above the (k+1)-th highest non-member score
    (a candidate is called a member when its score is >= ``threshold``; None when nothing is
    above it). Returns ``fpr`` (nominal), ``k_allowed``, ``threshold``, ``tp`` of ``n_members``,
    ``tpr`` with its Clopper–Pearson ``tpr_ci95``, ``fp`` of ``n_nonmembers`` and the realised
    ``fpr_realised`` (<= nominal; below it when non-members tie)."""
    labels = np.asarray(labels, dtype=bool)
    pos, neg = scores[labels], np.sort(scores[~labels])[::-1]
    n1, n0 = len(pos), len(neg)
    k = int(math.floor(fpr * n0 + 1e-9))
    if k >= n0:
        threshold, tp, fp = float(scores.min()), n1, n0
    else:
        above = scores[scores > neg[k]]
        threshold = float(above.min()) if len(above) else None
        tp, fp = int((pos > neg[k]).sum()), int((neg > neg[k]).sum())
    lo, hi = clopper_pearson(tp, n1)
    return {
        "fpr": fpr,
        "k_allowed": k,
        "threshold": threshold,
        "tp": tp,
        "n_members": n1,
        "tpr": tp / n1,
        "tpr_ci95": [lo, hi],
        "fp": fp,
        "n_nonmembers": n0,
        "fpr_realised": fp / n0,
    }


def tpr_at_fpr(scores: np.ndarray, labels: np.ndarray, fpr: float) -> float:
    """Highest TPR over thresholds whose FPR is <= ``fpr`` (``tpr_point``'s TPR)."""
    return tpr_point(np.asarray(scores, dtype=np.float64), labels, fpr)["tpr"]


def dp_ceiling_test(point: dict, epsilon: float, delta: float = 0.0, alpha: float = ALPHA) -> dict:
    """One-sided binomial test of the DP ceiling TPR <= e^ε·FPR + δ at ``point``'s threshold
    (``tpr_point``). Made only where N0 >= 10 / FPR (``CEILING_SUPPORT``); elsewhere
    ``{"estimable": False, "reason": ...}``.

    The threshold is picked after the fact on the same non-members, so their false-positive
    count is not a binomial draw at a fixed threshold and e^ε·(FP/N0) is no bound. We bound the
    threshold's true FPR conservatively instead: the threshold sits just above the (k+1)-th
    highest of N0 non-member scores (k = ⌊x·N0⌋ allowed, whatever the members score), so its
    true FPR is distributed as that order statistic's exceedance, Beta(k+1, N0−k) for continuous
    scores, whose 1 − α/2 quantile is exactly the Clopper–Pearson upper bound of k of N0
    (``fpr_upper``; ties only lower the true FPR). Given that bound, TP ~ Binomial(N1, TPR) with
    H0: TPR <= min(1, e^ε·fpr_upper + δ) (``bound``); ``p_value`` = P(Binomial(N1, bound) >= TP).
    ``violates`` when p < α/2: under H0 the FPR bound fails with probability <= α/2 and the
    binomial test rejects with probability <= α/2, so a DP-respecting target is flagged with
    probability <= α (union bound; no split of the non-members is needed)."""
    from scipy.stats import binomtest

    n0, n1, x = point["n_nonmembers"], point["n_members"], point["fpr"]
    need = math.ceil(CEILING_SUPPORT / x - 1e-9)
    if n0 < need:
        return {
            "estimable": False,
            "reason": f"needs >= {need:,} non-members at {x:.1%} FPR, has {n0:,}",
        }
    f_up = clopper_pearson(point["k_allowed"], n0, 1 - alpha)[1]
    bound = min(1.0, math.exp(epsilon) * f_up + delta)
    p = 1.0 if bound >= 1.0 else float(binomtest(point["tp"], n1, bound, "greater").pvalue)
    return {
        "estimable": True,
        "fpr_upper": f_up,
        "bound": bound,
        "tpr": point["tpr"],
        "p_value": p,
        "violates": p < alpha / 2,
        "alpha": alpha,
    }


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

    Returns ``auc``, ``auc_ci95`` [lo, hi], ``tpr_at_10pct_fpr``, ``tpr_at_1pct_fpr``,
    ``tpr_at_0.1pct_fpr`` (None with fewer than 1,000 non-members), ``tpr`` ({same keys:
    ``tpr_point``'s record: CI, threshold, false positives}), ``advantage`` (max TPR − FPR),
    ``n_members``, ``n_nonmembers``, ``per_site`` ({site: {auc, n_members, n_nonmembers}}; auc
    None when a site lacks a class), ``dp_ceiling`` (None unless ``epsilon`` is given; its
    ``tests`` hold ``dp_ceiling_test`` per FPR point) and ``error`` (None, or why the attack is
    broken).
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    s, y = _check(scores, is_member)
    n1, n0 = int(y.sum()), int((~y).sum())
    auc = float(roc_auc_score(y, s))
    lo, hi = bootstrap_auc_ci(s, y, n_boot=n_boot, seed=seed)
    fprs, tprs, _ = roc_curve(y, s)
    points = {k: tpr_point(s, y, f) for k, f in FPR_POINTS.items()}
    if n0 < MIN_NONMEMBERS_0P1:
        points["tpr_at_0.1pct_fpr"] = None
    out: dict = {
        "auc": auc,
        "auc_ci95": [lo, hi],
        **{k: None if p is None else p["tpr"] for k, p in points.items()},
        "tpr": points,
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
            "tests": {
                k: None if p is None else dp_ceiling_test(p, epsilon, d) for k, p in points.items()
            },
        }
    if auc < 0.5 and hi < 0.5:
        out["error"] = (
            f"{BROKEN_ATTACK}: AUC {auc:.3f} is below chance and its 95% CI [{lo:.3f}, "
            f"{hi:.3f}] excludes 0.5; this is not privacy"
        )
        log.error(out["error"])
    return out


CASE_RULE = "mean of the case's candidate slice scores"


def case_scores(scores: np.ndarray, is_member: np.ndarray, cases: np.ndarray):
    """(case ids sorted, their scores, is_member, slices per case): each case's score is the mean
    of its candidates' slice scores (``CASE_RULE``), its label its slices' label. ValueError when
    a case has both member and non-member slices (a split by slice: the patient-level question
    is then ill-posed) or a slice has no case id."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(is_member, dtype=bool)
    cases = np.asarray(cases).astype(str)
    if cases.shape != s.shape or y.shape != s.shape:
        raise ValueError(
            f"scores, is_member and cases must have one shape, got {s.shape}, "
            f"{y.shape} and {cases.shape}"
        )
    if (cases == "").any():
        raise ValueError(f"{int((cases == '').sum())} candidate slice(s) without a case id")
    ids, inverse, counts = np.unique(cases, return_inverse=True, return_counts=True)
    members = np.bincount(inverse, weights=y, minlength=len(ids))
    mixed = ids[(members > 0) & (members < counts)]
    if len(mixed):
        raise ValueError(
            f"case(s) {', '.join(mixed[:5])} have both member (train) and "
            "non-member (holdout) slices: the dataset is not split by patient"
        )
    mean = np.bincount(inverse, weights=s, minlength=len(ids)) / counts
    return ids, mean, members > 0, counts


def patient_level(
    scores: np.ndarray,
    is_member: np.ndarray,
    cases: np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """The audit at patient level: ``audit_metrics`` of the per-case scores (``case_scores``:
    the mean of each case's candidate slice scores; a case is a member when its slices are train
    slices). TPR at FPR x is reported only with at least 1 / x non-member cases (the smallest
    non-zero FPR is 1 / N0); else the value is "n/a (k non-member cases)" and its ``tpr`` record
    None. Few cases make a wide CI: ``n_member_cases`` / ``n_nonmember_cases`` say how few."""
    ids, s, y, counts = case_scores(scores, is_member, cases)
    got = audit_metrics(s, y, n_boot=n_boot, seed=seed)
    n0 = int((~y).sum())
    out = {"rule": CASE_RULE, "auc": got["auc"], "auc_ci95": got["auc_ci95"]}
    points = {}
    for k, f in FPR_POINTS.items():
        ok = n0 >= math.ceil(1 / f - 1e-9) and got["tpr"].get(k) is not None
        out[k] = got["tpr"][k]["tpr"] if ok else f"n/a ({n0} non-member cases)"
        points[k] = got["tpr"][k] if ok else None
    out.update(
        tpr=points,
        advantage=got["advantage"],
        n_member_cases=int(y.sum()),
        n_nonmember_cases=n0,
        n_member_slices=int(counts[y].sum()),
        n_nonmember_slices=int(counts[~y].sum()),
        error=got["error"],
    )
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
