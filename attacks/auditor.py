"""The auditor's mode: online LiRA and online RMIA, a stronger adversary than the black box.

A privacy audit should be run by the strongest reasonable adversary, not only the realistic one.
The auditor knows the candidate set (never which candidates are members): each of its shadow
federations trains on a random half of the pool *plus* a half of the candidates (shadows 2k and
2k+1 take complementary halves, so every candidate is IN for exactly half of the shadows). Each
candidate then has IN and OUT reference models and the online tests apply (Carlini et al.'s
online LiRA; RMIA with Pr(x) averaged over IN and OUT models). The black-box attacker cannot do
this — it does not know the candidates — so the report keeps the two threat models in separate
columns. The target is still only reached through ``Predict``.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from attacks.ladder import LadderResult, Predict, view_signals
from attacks.rungs import AUDITOR_RUNGS, BY_NAME, Evidence
from attacks.shadows import train_shadows

log = logging.getLogger(__name__)

AUDITOR_SEED_OFFSET = 7_000_003  # the auditor's shadows are not the attacker's


def train_auditor_shadows(
    cfg, method: str, pool, candidates, n_shadows: int, seed: int = 0, device=None
):
    """The auditor's ``n_shadows`` (even, >= 2) shadow federations, each trained on half the pool
    and half of the candidates (images, masks, sites) — every candidate of every target at once:
    a per-site release (FedBN) is compared with the shadow's model of that site, whose data held
    that site's candidates."""
    if n_shadows < 2 or n_shadows % 2:
        raise ValueError(f"the auditor needs an even number >= 2 of shadows, got {n_shadows}")
    pool_images, pool_masks, pool_sites = (np.asarray(a) for a in pool)
    cand_images, cand_masks, cand_sites = (np.asarray(a) for a in candidates)
    if not (cand_images.shape == cand_masks.shape and len(cand_sites) == len(cand_images)):
        raise ValueError("candidates must be (images, masks, sites) of the same length")
    return train_shadows(
        cfg,
        method,
        pool_images,
        pool_masks,
        n_shadows,
        seed + AUDITOR_SEED_OFFSET,
        pool_sites,
        extra=(cand_images, cand_masks, cand_sites),
        device=device,
    )


def run_auditor(
    predict: Predict,
    cfg,
    pool: tuple[np.ndarray, ...],
    candidates: tuple[np.ndarray, np.ndarray],
    shadows,
    inside: np.ndarray,
    *,
    seed: int = 0,
    site: str | None = None,
    query_budget: int | None = None,
) -> LadderResult:
    """Online LiRA and RMIA scores for the candidates (images, masks) of one target, against the
    auditor's ``shadows`` (``train_auditor_shadows``); ``inside`` (n_shadows, N) says which
    shadows trained on each of these candidates."""
    pool_images, pool_masks = (np.asarray(a) for a in pool[:2])
    cand_images, cand_masks = (np.asarray(a) for a in candidates)
    inside = np.asarray(inside, bool)
    if inside.shape != (len(shadows), len(cand_images)):
        raise ValueError(f"inside must be (shadows, candidates), got {inside.shape}")
    mia = cfg.mia
    t1 = time.perf_counter()
    sig = view_signals(
        predict,
        shadows,
        (cand_images, cand_masks),
        (pool_images, pool_masks),
        mia,
        seed=seed,
        site=site,
        query_budget=query_budget,
    )
    target = Evidence(
        masks=cand_masks,
        probs=sig.target_id,
        loss=sig.loss,
        lira_t=sig.lira_t,
        lira_r=sig.lira_r,
        rmia_t=sig.rmia_t,
        rmia_r=sig.rmia_r,
        rmia_tz=sig.rmia_tz,
        rmia_rz=sig.rmia_rz,
        inside=inside,
        gamma=mia.rmia_gamma,
    )
    scores = {r: BY_NAME[r].score(target) for r in AUDITOR_RUNGS}
    info = {
        "threat_model": "auditor: knows the candidate set (not the labels), trains online shadows",
        "views": list(sig.views),
        "queries": sig.queries,
        "n_shadows": len(shadows),
        "n_population": int(len(sig.z_idx)),
        "timing_s": {
            "shadows": sum(sh.metrics.get("shadow_train_s", 0.0) for sh in shadows),
            "attacks": time.perf_counter() - t1,
        },
    }
    log.info("auditor: %d online shadows, %d queries", len(shadows), sig.queries)
    return LadderResult(scores, info)
