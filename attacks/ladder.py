"""The attack ladder: blind baseline, loss threshold, learned shadow attack, offline LiRA.

What the attacker has (the black-box threat model of docs/architecture.md): a black box
``predict(images_hu int16 (N, H, W)) -> tumor probabilities float32 (N, H, W)``, the public
config (architecture and training recipe), its own pool of (image, mask) slices from the
``attacker`` split (same public generator, another seed) and the candidates (image, mask) without
membership labels. It never sees weights, gradients or the training data. Every score is
"higher = member".

Rungs:

1. ``blind_scores`` never queries the model: a fixed function of the candidate's image and mask.
   On a proper split (members and non-members from the same distributions) it sits at AUC ≈ 0.5;
   away from 0.5 it flags a biased split, not a leak.
2. ``loss_scores`` (Yeom et al.): the negative per-image training loss (BCE + 1 − soft Dice).
3. ``shadow_attack_scores`` (Shokri et al.; the paper's attack): shadow U-Nets trained like the
   target on random halves of the pool, per-image output-map features (``attacks.features``) of
   their in/out pool slices, a scikit-learn classifier, applied to the target's features.
4. ``lira_scores``: offline LiRA with a fixed (global) variance. The candidates are never in the
   attacker's pool, so every shadow is an OUT (reference) model for every candidate.

Shadows are shadow federations (``common.training.federated``): the shadow's half of the pool is
split into five shadow sites by the public site profile each pool slice was drawn from, and the
shadow runs the target's method — rounds, local epochs, batch size, learning rate, optimizer,
FedProx's proximal term, DP-SGD per site with its own σ and accountant, FedBN's local
normalisation — in one process. A centrally trained shadow (all of the half as one site, the
ladder's first design) is a poor reference for a federated target: on a 64×64 FedAvg target
(50 slices per site, 10 rounds × 5 epochs) offline LiRA reached AUC 0.48 with central shadows and
0.68 with one shadow federation (docs/results.md). What still differs from the target: the
shadow's sites hold the pool's slices (half the attacker pool, not ``data.train_total``), and
every shadow starts from the public initial weights (``model_for(cfg, method)``). The blind
baseline and the LiRA calibration are there to expose a mismatch that matters.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from attacks.features import IDX, image_features, pixel_maps, tumour_region
from common.methods import get_method
from common.seeds import shadow_seed
from common.transforms import predict_hu, to_inputs

log = logging.getLogger(__name__)

Predict = Callable[[np.ndarray], np.ndarray]
QUERY_BATCH = 64  # slices per predict call; the release service enforces its own limit too
LADDER = ("blind", "loss", "shadow", "lira")
BLIND_WEIGHTS = np.array([1.0, 0.25, 0.25])  # tumor area, mean HU, HU std (see blind_scores)


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
# Rung 1: blind baseline


def blind_scores(cand_images: np.ndarray, cand_masks: np.ndarray) -> np.ndarray:
    """A fixed score from the candidate alone (no model, no labels, nothing fitted).

    A weighted sum of z-scored statistics (z over the candidates; no labels): tumor area
    (weight 1, the main driver of a slice's loss, so the confounder that matters most for the
    loss-based rungs), mean HU and HU standard deviation (scanner offset and noise, weight 0.25
    each). Members and non-members drawn from the same site distributions give AUC ≈ 0.5; a split
    that differs in prevalence or tumor size (or, more weakly, scanner) moves it away from 0.5.
    A fixed score only sees a bias along its own statistics: it is a tripwire, not a proof that
    the split is unbiased.
    """
    images = np.asarray(cand_images, dtype=np.float64)
    masks = np.asarray(cand_masks)
    if images.ndim != 3 or images.shape != masks.shape:
        raise ValueError(f"expected (N, H, W) images and masks, got {images.shape}, {masks.shape}")
    n = len(images)
    stats = np.stack(
        [
            masks.reshape(n, -1).mean(axis=1),
            images.reshape(n, -1).mean(axis=1),
            images.reshape(n, -1).std(axis=1),
        ],
        axis=1,
    )
    sd = stats.std(axis=0)
    z = (stats - stats.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    return z @ BLIND_WEIGHTS


# ---------------------------------------------------------------------------------------------
# Rung 2: loss threshold (Yeom)


def loss_scores(target_probs: np.ndarray, cand_masks: np.ndarray) -> np.ndarray:
    """Yeom et al.: minus the per-image training loss (BCE + 1 − soft Dice) of the target's
    prediction (``query``); higher = member."""
    return -image_features(target_probs, cand_masks)[:, IDX["seg_loss"]]


# ---------------------------------------------------------------------------------------------
# Shadow models


@dataclass
class ShadowModel:
    """A shadow federation the attacker owns, and which pool slices it trained on.

    ``model`` is its released global model; ``site_models`` its sites' own models (a method that
    keeps normalisation layers local releases one model per site, and a target released by site
    S is compared with the shadow's site S).
    """

    model: nn.Module
    member_mask: np.ndarray  # bool over the attacker pool
    window: tuple[float, float]
    method: str
    metrics: dict = field(default_factory=dict)
    site_models: dict[str, nn.Module] = field(default_factory=dict)

    def predict(
        self, images_hu: np.ndarray, batch: int = QUERY_BATCH, site: str | None = None
    ) -> np.ndarray:
        """Tumor probabilities float32 (N, H, W) for int16 HU slices (same contract as the
        target); ``site``: that site's own model where the shadow has one."""
        model = self.site_models.get(site, self.model) if site is not None else self.model
        model.eval()
        return predict_hu(model, np.asarray(images_hu), self.window, batch)


def _dataset(images: np.ndarray, masks: np.ndarray, window: tuple[float, float]):
    from torch.utils.data import TensorDataset

    x = to_inputs(images, window)
    y = torch.from_numpy(np.asarray(masks, dtype=np.float32)).unsqueeze(1)
    return TensorDataset(x, y)


def train_shadows(
    cfg,
    method: str,
    pool_images: np.ndarray,
    pool_masks: np.ndarray,
    n_shadows: int,
    seed: int,
    pool_sites: np.ndarray | None = None,
) -> list[ShadowModel]:
    """``n_shadows`` shadow federations, each trained like the target on a random half of the pool.

    The half is split into shadow sites by ``pool_sites`` (the public site profile each pool slice
    was drawn from), and the shadow runs the target's method, rounds, local epochs, batch size,
    learning rate and DP-SGD per site (``common.training.federated``); a reference-row target
    (``pooled``, ``local``) gets the same kind of shadow. Without ``pool_sites`` the half is one
    site: a centrally trained shadow. ``cfg`` is the public ``common.config.Config``.
    """
    from common.training.federated import simulate_method

    pool_images, pool_masks = np.asarray(pool_images), np.asarray(pool_masks)
    if pool_images.ndim != 3 or pool_images.shape != pool_masks.shape:
        raise ValueError(
            f"pool images and masks must be (N, H, W), got {pool_images.shape}, {pool_masks.shape}"
        )
    if n_shadows < 1:
        raise ValueError(f"n_shadows must be >= 1, got {n_shadows}")
    n = len(pool_images)
    if n < 4:
        raise ValueError(f"the attacker pool needs at least 4 slices (2 in, 2 out), got {n}")
    sites = np.full(n, "pool") if pool_sites is None else np.asarray(pool_sites).astype(str)
    if sites.shape != (n,):
        raise ValueError(f"pool_sites must give one site per pool slice, got shape {sites.shape}")
    window = tuple(cfg.data.window)
    shadows = []
    for i in range(n_shadows):
        rng = np.random.default_rng([seed, i])
        member = np.zeros(n, bool)
        member[rng.permutation(n)[: n // 2]] = True
        datasets = {
            str(s): _dataset(pool_images[member & (sites == s)], pool_masks[member & (sites == s)],
                             window)
            for s in np.unique(sites[member])
        }  # fmt: skip
        start = time.perf_counter()
        fed = simulate_method(cfg, method, datasets, seed=shadow_seed(seed, i))
        elapsed = time.perf_counter() - start
        site_models = (
            {s: fed.model(cfg, method, s) for s in datasets}
            if get_method(method).release == "per_site"
            else {}
        )
        metrics = {"shadow_train_s": elapsed, "shadow_sites": len(datasets)}
        log.info("shadow federation %d/%d (%s, %d sites) trained in %.1fs", i + 1, n_shadows,
                 method, len(datasets), elapsed)  # fmt: skip
        shadows.append(
            ShadowModel(fed.model(cfg, method), member, window, method, metrics, site_models)
        )
    return shadows


# ---------------------------------------------------------------------------------------------
# Rung 3: learned shadow attack


def _classifier(kind: str, n_rows: int):
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "auto":
        kind = "gb" if n_rows >= 200 else "lr"
    if kind == "lr":
        return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    if kind == "gb":
        return GradientBoostingClassifier(n_estimators=200, max_depth=3, subsample=0.8,
                                          learning_rate=0.05, random_state=0)  # fmt: skip
    raise ValueError(f"unknown classifier {kind!r}; use 'auto', 'lr' or 'gb'")


def _shadow_from_features(
    train_x: np.ndarray, train_y: np.ndarray, target_x: np.ndarray, classifier: str
) -> np.ndarray:
    if train_y.all() or not train_y.any():
        raise ValueError("the shadow training set needs both members and non-members")
    clf = _classifier(classifier, len(train_y))
    clf.fit(train_x, train_y)
    return clf.predict_proba(target_x)[:, 1]


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
    return _shadow_from_features(x, y, image_features(target_probs, cand_masks), classifier)


# ---------------------------------------------------------------------------------------------
# Rung 4: offline LiRA, fixed variance


LIRA_RING_PX = 3  # the LiRA statistic's region: the tumour and this many pixels around it


def lira_signal(probs: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per-image LiRA statistic: the mean logit-scaled confidence on the true label,
    φ = log p_y − log(1 − p_y) (probabilities clipped, see ``attacks.features``), over the tumour
    and a ``LIRA_RING_PX`` ring around it — the whole slice when it has no tumour.

    Memorisation shows on tumour and boundary pixels; the far background is easy for every model
    and only adds variance (He et al., ECCV 2020). Measured on the standard profile's FedAvg
    target: AUC 0.630 → 0.655 with one shadow federation, 0.681 → 0.702 with three
    (docs/results.md).
    """
    m = pixel_maps(probs, masks)
    n = len(m["phi"])
    phi = m["phi"].reshape(n, -1)
    region = tumour_region(m["g"], LIRA_RING_PX).reshape(n, -1)
    count = region.sum(axis=1)
    inside = np.divide((phi * region).sum(axis=1), count, out=np.zeros(n), where=count > 0)
    return np.where(count > 0, inside, phi.mean(axis=1))


def _lira_from_signals(target: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Offline one-sided LiRA: log P(φ_ref <= φ_target) under N(μ_out(x), σ²) per candidate.

    ``reference`` is (n_shadows, N). μ_out is the per-candidate mean over reference models; σ is
    one global standard deviation (LiRA's "fixed variance", the stable choice with few shadows):
    the pooled within-candidate spread with >= 2 shadows, else the spread of φ_ref over the
    candidates. With a global σ the ranking is that of φ_target − μ_out(x); σ only scales it.
    """
    from scipy.stats import norm

    mu = reference.mean(axis=0)
    if len(reference) >= 2:
        sigma = float(
            np.sqrt(((reference - mu) ** 2).sum() / (reference.size - reference.shape[1]))
        )
    else:
        sigma = float(reference.std())
    sigma = max(sigma, 1e-6)
    return norm.logcdf((target - mu) / sigma)


def lira_scores(
    shadows: list[ShadowModel],
    target_probs: np.ndarray,
    cand_images: np.ndarray,
    cand_masks: np.ndarray,
    site: str | None = None,
) -> np.ndarray:
    """Offline fixed-variance LiRA with the shadows as OUT models; higher = member."""
    target = lira_signal(target_probs, cand_masks)
    reference = np.stack(
        [lira_signal(sh.predict(cand_images, site=site), cand_masks) for sh in shadows]
    )
    return _lira_from_signals(target, reference)


# ---------------------------------------------------------------------------------------------
# The whole ladder


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
) -> dict[str, np.ndarray]:
    """Every rung's scores for the candidates: ``{"blind", "loss", "shadow", "lira"}``.

    ``pool`` is (images, masks) or (images, masks, sites) (``train_shadows``). The target is
    queried once for all candidates; pass ``shadows`` to reuse trained ones; ``site``: the
    target is that site's own model.
    """
    pool_images, pool_masks = (np.asarray(a) for a in pool[:2])
    pool_sites = np.asarray(pool[2]) if len(pool) > 2 else None
    cand_images, cand_masks = (np.asarray(a) for a in candidates)
    if cand_images.ndim != 3 or cand_images.shape != cand_masks.shape:
        raise ValueError(
            f"candidate images and masks must be (N, H, W), got {cand_images.shape}, "
            f"{cand_masks.shape}"
        )
    t0 = time.perf_counter()
    target_probs = query(predict, cand_images)  # the only queries of the whole ladder
    t1 = time.perf_counter()
    if shadows is None:
        shadows = train_shadows(cfg, method, pool_images, pool_masks, n_shadows, seed, pool_sites)
    t2 = time.perf_counter()
    scores = {
        "blind": blind_scores(cand_images, cand_masks),
        "loss": loss_scores(target_probs, cand_masks),
        "shadow": shadow_attack_scores(shadows, target_probs, cand_masks, pool_images, pool_masks,
                                       classifier=classifier, site=site),
        "lira": lira_scores(shadows, target_probs, cand_images, cand_masks, site),
    }  # fmt: skip
    log.info("ladder: query %.1fs, shadows %.1fs, attacks %.1fs (%d shadows, %d candidates)",
             t1 - t0, t2 - t1, time.perf_counter() - t2, len(shadows), len(cand_images))  # fmt: skip
    return scores
