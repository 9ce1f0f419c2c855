"""The attack ladder: every rung's membership scores for a set of candidate slices.

What the attacker has (the black-box threat model of docs/architecture.md): a black box
``predict(images_hu int16 (N, H, W)) -> tumor probabilities float32 (N, H, W)``, the public
config (architecture and training recipe), its own pool of (image, mask) slices from the
``attacker`` split (same public generator, another seed) and the candidates (image, mask) without
membership labels. It never sees weights, gradients or the training data. Every score is
"higher = member".

Rungs (``attacks.rungs.RUNGS``: each one's row and score function, the same for choosing
and for scoring):

- ``blind`` never queries the model: a fixed function of the candidate's image and mask. On a
  proper split it sits at AUC ≈ 0.5; away from 0.5 it flags a biased split, not a leak.
- ``loss`` (Yeom et al.): minus the per-image training loss (BCE + 1 − soft Dice).
- ``shadow`` (Shokri et al.; the paper's attack): a scikit-learn classifier on per-image features
  of the output map (``attacks.features``), trained on the shadows' IN/OUT pool slices.
- ``map`` (He et al. / Chobola et al.): a small CNN on the per-pixel loss map (``attacks.maps``).
- ``lira``: offline LiRA with a fixed variance (``attacks.calibrated``).
- ``rmia``: offline RMIA against population samples z from the pool (``attacks.calibrated``).

Shadows are shadow federations trained like the target (``attacks.shadows``). Every candidate
and population sample is queried under the views of ``mia.views`` (``attacks.views``) within the
query budget; the calibrated rungs and the loss average over the views. With two shadows or more
each shadow in turn plays the target for the others, which calibrates RMIA's ``a`` and measures
every rung on shadow data: the strongest rung is chosen there, never on the target's labels.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from attacks.calibrated import (
    RMIA_A_FALLBACK,
    calibrate_a,
    lira_signal,
    rmia_signal,
)
from attacks.features import IDX, image_features
from attacks.rungs import (
    BY_NAME,
    FALLBACK,
    LADDER,
    QUERY_RUNGS,
    Evidence,
    loss_of,
    shadow_from_features,
)
from attacks.shadows import QUERY_BATCH, ShadowModel, train_shadows
from attacks.views import apply_view, views_within_budget

log = logging.getLogger(__name__)

Predict = Callable[[np.ndarray], np.ndarray]


def query(predict: Predict, images: np.ndarray, batch: int = QUERY_BATCH) -> np.ndarray:
    """Call the black box in batches and check what comes back: float32 (N, H, W) in [0, 1]."""
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"images must be (N, H, W) HU slices, got shape {images.shape}")
    parts = []
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        out = np.asarray(predict(chunk), dtype=np.float32)
        if out.shape != chunk.shape:
            raise ValueError(
                f"predict returned shape {out.shape} for a batch of shape {chunk.shape}"
            )
        parts.append(out)
    probs = np.concatenate(parts) if parts else np.zeros(images.shape, np.float32)
    if probs.size and (not np.isfinite(probs).all() or probs.min() < 0 or probs.max() > 1):
        raise ValueError("predict must return probabilities in [0, 1]")
    return probs


# ---------------------------------------------------------------------------------------------
# Rung 2: loss threshold (Yeom)


def loss_scores(target_probs: np.ndarray, cand_masks: np.ndarray) -> np.ndarray:
    """Yeom et al.: minus the per-image training loss (BCE + 1 − soft Dice) of the target's
    prediction (``query``); higher = member."""
    return -image_features(target_probs, cand_masks)[:, IDX["seg_loss"]]


# ---------------------------------------------------------------------------------------------
# Rung 3: learned shadow attack


def _shadow_training_set(
    shadows, pool_images, pool_masks, site: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for sh in shadows:
        xs.append(image_features(sh.predict(pool_images, site=site), pool_masks))
        ys.append(sh.member_mask)
    return np.concatenate(xs), np.concatenate(ys)


def shadow_attack_scores(
    shadows: list[ShadowModel],
    target_probs: np.ndarray,
    cand_masks: np.ndarray,
    pool_images: np.ndarray,
    pool_masks: np.ndarray,
    *,
    classifier: str = "auto",
    site: str | None = None,
) -> np.ndarray:
    """Shokri-style learned attack on the per-image features of the target's prediction
    (``attacks.features``); member probability per candidate.

    ``classifier``: "lr" (standardised logistic regression), "gb" (gradient boosting) or "auto"
    (gb from 200 shadow rows up, lr below, where boosting just memorises the few rows).
    ``site``: the target is that site's own model (see ``ShadowModel``).
    """
    x, y = _shadow_training_set(shadows, pool_images, pool_masks, site)
    return shadow_from_features(x, y, image_features(target_probs, cand_masks), classifier)


# ---------------------------------------------------------------------------------------------
# The whole ladder


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels, bool)
    return float(roc_auc_score(labels, scores)) if 0 < labels.sum() < len(labels) else 0.5


@dataclass
class LadderResult:
    """Every rung's scores for the candidates (higher = member) and what the attack spent and
    chose: ``info`` holds the views and queries used, RMIA's ``a``, the per-rung AUCs measured on
    the shadows (``selection``) and the ``strongest`` rung picked from them."""

    scores: dict[str, np.ndarray]
    info: dict


def _population(shadows: list[ShadowModel], size: int, seed: int) -> np.ndarray:
    """Indices of RMIA's population samples z: pool slices that no shadow trained on."""
    out_all = ~np.any([sh.member_mask for sh in shadows], axis=0)
    idx = np.flatnonzero(out_all)
    if len(idx) > size:
        idx = np.sort(np.random.default_rng([seed, 104729]).choice(idx, size, replace=False))
    if not len(idx):
        raise ValueError("no pool slice is outside every shadow: RMIA has no population samples")
    return idx


def select_on_shadows(
    pool_probs: list[np.ndarray],
    pool_masks: np.ndarray,
    members: np.ndarray,
    z_idx: np.ndarray,
    *,
    gamma: float,
    classifier: str,
    seed: int,
    rungs=QUERY_RUNGS,
    spent: dict[str, float] | None = None,
) -> tuple[dict[str, float], float | None, dict]:
    """Each shadow in turn plays the target (labels: its own pool membership), the others are
    its references and the attacker's training data; every queried rung is scored on the pool
    slices that at least one other shadow left out. Returns ({rung: mean AUC}, RMIA's calibrated
    ``a``, {a: mean AUC}). This is where the strongest rung is chosen: on shadow data only,
    never on the target's labels. Needs two shadows or more. ``spent``: each rung's seconds are
    added to it."""
    spent = {} if spent is None else spent
    clock = _Clock(spent)
    s = len(pool_probs)
    if s < 2:
        raise ValueError("selecting on shadow data needs at least two shadows")
    members = np.asarray(members, bool)
    feats = [image_features(p, pool_masks) for p in pool_probs]
    lira_sig = np.stack([lira_signal(p, pool_masks) for p in pool_probs])
    rmia_sig = np.stack([rmia_signal(p, pool_masks) for p in pool_probs])
    pairs = []  # (evidence, labels): shadow j plays the target, the others are its references
    for j in range(s):
        others = [k for k in range(s) if k != j]
        out = ~members[others]
        ev = out.any(axis=0)
        pairs.append(
            (
                Evidence(
                    masks=pool_masks[ev],
                    probs=pool_probs[j][ev],
                    loss=loss_of(feats[j][ev])[None],
                    lira_t=lira_sig[j][ev],
                    lira_r=lira_sig[others][:, ev],
                    rmia_t=rmia_sig[j][ev],
                    rmia_r=rmia_sig[others][:, ev],
                    rmia_tz=rmia_sig[j][z_idx],
                    rmia_rz=rmia_sig[others][:, z_idx],
                    train_probs=[pool_probs[k] for k in others],
                    train_masks=pool_masks,
                    train_members=members[others],
                    out=out[:, ev],
                    gamma=gamma,
                    classifier=classifier,
                    seed=seed,
                ),
                members[j][ev],
            )
        )
        e = pairs[-1][0]  # the features are per image: the ones computed above, not again
        e.features, e.train_features = feats[j][ev], np.concatenate([feats[k] for k in others])
    a, a_table = (None, {})
    if "rmia" in rungs:
        with clock("rmia"):
            a, a_table = calibrate_a([(e.rmia_kwargs(), y) for e, y in pairs], _auc)
        for e, _y in pairs:
            e.a = a
    per_rung = {}
    for r in rungs:
        with clock(r):
            per_rung[r] = float(np.mean([_auc(BY_NAME[r].score(e), y) for e, y in pairs]))
    return per_rung, a, a_table


class _Clock:
    """``with clock(name):`` adds the block's seconds to ``spent[name]``."""

    def __init__(self, spent: dict[str, float]) -> None:
        self.spent = spent

    @contextlib.contextmanager
    def __call__(self, name: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.spent[name] = self.spent.get(name, 0.0) + time.perf_counter() - t


@dataclass
class ViewSignals:
    """Per-view signals of the target and of each shadow: ``*_t`` (V, N), ``*_r`` (S, V, N);
    ``*_tz`` / ``*_rz`` on the population samples z; ``target_id`` the target's output on the
    candidates themselves; ``queries`` the target queries spent, under ``views``."""

    loss: np.ndarray
    lira_t: np.ndarray
    lira_r: np.ndarray
    rmia_t: np.ndarray
    rmia_r: np.ndarray
    rmia_tz: np.ndarray
    rmia_rz: np.ndarray
    target_id: np.ndarray
    queries: int
    views: tuple[str, ...]
    z_idx: np.ndarray  # the pool indices of the population samples


def view_signals(
    predict: Predict,
    shadows,
    candidates,
    pool,
    mia,
    *,
    seed: int = 0,
    site=None,
    query_budget: int | None = None,
):
    """Draw RMIA's population samples z from the pool (``_population``), keep the views of
    ``mia.views`` that fit ``query_budget``, query the target on every view of the candidates and
    of z, run the shadows on the same views, and read the loss, LiRA and RMIA signals of each."""
    cand_images, cand_masks = candidates
    z_idx = _population(shadows, mia.population, seed)
    z_images, z_masks = pool[0][z_idx], pool[1][z_idx]
    views = views_within_budget(mia.views, len(cand_images) + len(z_idx), query_budget)
    out = {k: [] for k in ("loss", "lira_t", "rmia_t", "rmia_tz")}
    refs = {k: [[] for _ in shadows] for k in ("lira_r", "rmia_r", "rmia_rz")}
    queries, target_id = 0, None
    for v in views:
        xv, mv = apply_view(v, cand_images), apply_view(v, cand_masks)
        zv, zmv = apply_view(v, z_images), apply_view(v, z_masks)
        probs, probs_z = query(predict, xv), query(predict, zv)
        queries += len(xv) + len(zv)
        target_id = probs if target_id is None else target_id
        out["loss"].append(loss_scores(probs, mv))
        out["lira_t"].append(lira_signal(probs, mv))
        out["rmia_t"].append(rmia_signal(probs, mv))
        out["rmia_tz"].append(rmia_signal(probs_z, zmv))
        for k, sh in enumerate(shadows):
            sp = sh.predict(xv, site=site)
            refs["lira_r"][k].append(lira_signal(sp, mv))
            refs["rmia_r"][k].append(rmia_signal(sp, mv))
            refs["rmia_rz"][k].append(rmia_signal(sh.predict(zv, site=site), zmv))
    arrays = {k: np.stack(v) for k, v in out.items()}
    arrays.update({k: np.stack([np.stack(r) for r in v]) for k, v in refs.items()})
    return ViewSignals(**arrays, target_id=target_id, queries=queries, views=views, z_idx=z_idx)


def run_ladder(
    predict: Predict,
    cfg,
    method: str,
    pool: tuple[np.ndarray, ...],
    candidates: tuple[np.ndarray, np.ndarray],
    *,
    n_shadows: int = 1,
    seed: int = 0,
    classifier: str = "auto",
    shadows: list[ShadowModel] | None = None,
    site: str | None = None,
    query_budget: int | None = None,
    device: torch.device | None = None,
) -> LadderResult:
    """Every rung's scores for the candidates and the strongest rung, chosen on shadow data.

    ``pool`` is (images, masks) or (images, masks, sites) (``train_shadows``). The target is
    queried on every candidate and on RMIA's population samples, under each of ``cfg.mia.views``
    that fits ``query_budget`` (target queries in all); pass ``shadows`` to reuse trained ones;
    ``site``: the target is that site's own model; ``device``: where shadows train (default
    CPU).
    """
    mia = cfg.mia
    pool_images, pool_masks = (np.asarray(a) for a in pool[:2])
    pool_sites = np.asarray(pool[2]) if len(pool) > 2 else None
    cand_images, cand_masks = (np.asarray(a) for a in candidates)
    if cand_images.ndim != 3 or cand_images.shape != cand_masks.shape:
        raise ValueError(
            f"candidate images and masks must be (N, H, W), got {cand_images.shape}, "
            f"{cand_masks.shape}"
        )
    t0 = time.perf_counter()
    if shadows is None:
        shadows = train_shadows(
            cfg, method, pool_images, pool_masks, n_shadows, seed, pool_sites, device=device
        )
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
    queries, target_id, views, z_idx = sig.queries, sig.target_id, sig.views, sig.z_idx
    t2 = time.perf_counter()
    pool_probs = [sh.predict(pool_images, site=site) for sh in shadows]
    members = np.stack([sh.member_mask for sh in shadows])
    selection, a, a_table = {}, mia.rmia_a, {}
    selecting: dict[str, float] = {}  # each rung's seconds choosing on shadow data
    if len(shadows) >= 2:
        selection, a_cal, a_table = select_on_shadows(
            pool_probs,
            pool_masks,
            members,
            z_idx,
            gamma=mia.rmia_gamma,
            classifier=classifier,
            seed=seed,
            spent=selecting,
        )
        a = a_cal if mia.rmia_a is None else mia.rmia_a
        log.info(
            "rungs measured on shadow data in %.1fs (%s); scoring the candidates",
            sum(selecting.values()),
            ", ".join(f"{r} {v:.1f}s" for r, v in selecting.items()),
        )
    a = RMIA_A_FALLBACK if a is None else a
    strongest = max(selection, key=selection.get) if selection else FALLBACK
    target = Evidence(
        masks=cand_masks,
        probs=target_id,
        loss=sig.loss,
        lira_t=sig.lira_t,
        lira_r=sig.lira_r,
        rmia_t=sig.rmia_t,
        rmia_r=sig.rmia_r,
        rmia_tz=sig.rmia_tz,
        rmia_rz=sig.rmia_rz,
        train_probs=pool_probs,
        train_masks=pool_masks,
        train_members=members,
        images=cand_images,
        gamma=mia.rmia_gamma,
        a=a,
        classifier=classifier,
        seed=seed,
    )
    scoring: dict[str, float] = {}  # each rung's seconds scoring the candidates
    clock = _Clock(scoring)
    scores = {}
    for r in LADDER:
        with clock(r):
            scores[r] = BY_NAME[r].score(target)
    t3 = time.perf_counter()
    rungs_s = {
        r: selecting.get(r, 0.0) + scoring.get(r, 0.0) for r in sorted({*selecting, *scoring})
    }
    info = {
        "views": list(views),
        "queries": queries,
        "n_population": int(len(z_idx)),
        "rmia_a": float(a),
        "rmia_a_calibrated": bool(a_table) and mia.rmia_a is None,
        "rmia_a_table": a_table,
        "rmia_gamma": mia.rmia_gamma,
        "selection": selection,
        "strongest": strongest,
        "selected_on": "shadows" if selection else "fixed order (one shadow: nothing to select on)",
        "n_shadows": len(shadows),
        "timing_s": {
            "shadows": t1 - t0,
            "queries": t2 - t1,
            "attacks": t3 - t2,
            "rungs": rungs_s,
        },
    }
    log.info(
        "ladder: shadows %.1fs, queries+shadow views %.1fs, attacks %.1fs (%s; %d shadows, "
        "%d candidates, %d queries, views %s); strongest on shadow data: %s",
        t1 - t0,
        t2 - t1,
        t3 - t2,
        ", ".join(f"{r} {v:.1f}s" for r, v in rungs_s.items()),
        len(shadows),
        len(cand_images),
        queries,
        ",".join(views),
        strongest,
    )
    return LadderResult(scores, info)
