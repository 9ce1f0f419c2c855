"""Per-image membership features from a segmentation model's output map and the true mask.

Everything here is computed from what a black-box attacker sees (the released per-pixel tumor
probabilities) plus the candidate's ground-truth mask (the standard "Type-II" MI game). The menu
follows the segmentation MIA literature (He et al., ECCV 2020; Chobola et al. 2022): memorisation
shows mostly on tumor and boundary pixels, since background is easy for every model, so the losses
are also reported per region.

Probabilities are clipped to [PROB_EPS, 1 − PROB_EPS] before any log, so a saturated float32
output (exactly 0 or 1) gives a large finite loss instead of inf. A tumor-free image has no tumor
or boundary pixels: its region features are 0 and ``has_tumor`` is 0 (the classifiers need finite
inputs).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

PROB_EPS = 1e-6
SMOOTH = 1.0  # soft-Dice smoothing, as in common.metrics.seg_loss
BOUNDARY_PX = 2  # half-width of the boundary band around the tumor edge
QUANTILES = (5, 25, 50, 75, 95, 99)

FEATURE_NAMES: tuple[str, ...] = (
    "bce",  # mean per-pixel binary cross-entropy
    "soft_dice",
    "hard_dice",  # Dice of the mask thresholded at 0.5 (1 when both are empty)
    "seg_loss",  # the training loss: bce + 1 - soft_dice
    "bce_tumor",
    "bce_boundary",
    "bce_background",
    "entropy",
    "entropy_tumor",
    "entropy_background",
    "conf_tumor",  # mean p on tumor pixels
    "conf_background",  # mean 1 - p on background pixels
    "pred_area",  # sum of p / pixels
    "true_area",
    "area_diff",  # pred_area - true_area
    "phi",  # LiRA's logit-scaled confidence on the true label, mean over pixels
    "phi_tumor",
    "has_tumor",
    *(f"bce_q{q}" for q in QUANTILES),
)
IDX = {name: i for i, name in enumerate(FEATURE_NAMES)}


def _as_nhw(probs: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs, masks = np.asarray(probs), np.asarray(masks)
    if probs.ndim == 4 and probs.shape[1] == 1:
        probs = probs[:, 0]
    if masks.ndim == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if probs.ndim != 3 or probs.shape != masks.shape:
        raise ValueError(
            f"probs and masks must both be (N, H, W), got {probs.shape} and {masks.shape}"
        )
    if probs.size and (not np.isfinite(probs).all() or probs.min() < 0 or probs.max() > 1):
        raise ValueError("probs must be finite probabilities in [0, 1]")
    if masks.size and not np.isin(masks, (0, 1)).all():
        raise ValueError("masks must be binary (0 or 1)")
    return probs.astype(np.float64), masks.astype(bool)


def _in_plane(iterations: int, fn, g: np.ndarray, **kw) -> np.ndarray:
    """A binary morphology ``fn`` within each image of (N, H, W) (no mixing along the batch)."""
    struct = np.zeros((3, 3, 3), bool)
    struct[1] = ndimage.generate_binary_structure(2, 1)
    return fn(g, structure=struct, iterations=iterations, **kw)


def tumour_region(masks: np.ndarray, ring_px: int) -> np.ndarray:
    """The tumour of each (N, H, W) mask dilated by ``ring_px`` pixels (4-connected), per image."""
    return _in_plane(ring_px, ndimage.binary_dilation, np.asarray(masks, bool))


def _region_mean(values: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Mean of ``values`` over ``region`` per image (N, H, W) -> (N,); 0 where the region is empty."""
    count = region.sum(axis=(1, 2))
    total = np.where(region, values, 0.0).sum(axis=(1, 2))
    return np.divide(total, count, out=np.zeros(len(values)), where=count > 0)


def pixel_maps(probs: np.ndarray, masks: np.ndarray) -> dict[str, np.ndarray]:
    """Per-pixel maps: ``bce`` (the structured loss map), ``phi`` (log p_y − log(1 − p_y)),
    ``entropy`` (nats) and the clipped probabilities ``p``."""
    p, g = _as_nhw(probs, masks)
    p = np.clip(p, PROB_EPS, 1 - PROB_EPS)
    log_p, log_q = np.log(p), np.log1p(-p)
    bce = -np.where(g, log_p, log_q)
    phi = np.where(g, log_p - log_q, log_q - log_p)
    entropy = -(p * log_p + (1 - p) * log_q)
    return {"p": p, "g": g, "bce": bce, "phi": phi, "entropy": entropy}


def image_features(probs: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(N, F) float64 features, columns named by ``FEATURE_NAMES``."""
    m = pixel_maps(probs, masks)
    p, g, bce, phi, ent = m["p"], m["g"], m["bce"], m["phi"], m["entropy"]
    n = len(p)
    if n == 0:
        return np.zeros((0, len(FEATURE_NAMES)))
    pixels = p.shape[1] * p.shape[2]
    flat_p, flat_g = p.reshape(n, -1), g.reshape(n, -1)
    inter = (flat_p * flat_g).sum(axis=1)
    soft_dice = (2 * inter + SMOOTH) / (flat_p.sum(axis=1) + flat_g.sum(axis=1) + SMOOTH)
    pred = flat_p > 0.5
    denom = pred.sum(axis=1) + flat_g.sum(axis=1)
    hard_dice = np.divide(2.0 * (pred & flat_g).sum(axis=1), denom, out=np.ones(n), where=denom > 0)
    # Boundary band: dilated minus eroded mask, within each image (no mixing along the batch).
    dil = tumour_region(g, BOUNDARY_PX)
    ero = _in_plane(BOUNDARY_PX, ndimage.binary_erosion, g, border_value=1)
    boundary = dil & ~ero
    bce_mean = bce.reshape(n, -1).mean(axis=1)
    pred_area = flat_p.sum(axis=1) / pixels
    true_area = flat_g.sum(axis=1) / pixels
    cols = {
        "bce": bce_mean,
        "soft_dice": soft_dice,
        "hard_dice": hard_dice,
        "seg_loss": bce_mean + 1.0 - soft_dice,
        "bce_tumor": _region_mean(bce, g),
        "bce_boundary": _region_mean(bce, boundary),
        "bce_background": _region_mean(bce, ~g),
        "entropy": ent.reshape(n, -1).mean(axis=1),
        "entropy_tumor": _region_mean(ent, g),
        "entropy_background": _region_mean(ent, ~g),
        "conf_tumor": _region_mean(p, g),
        "conf_background": _region_mean(1 - p, ~g),
        "pred_area": pred_area,
        "true_area": true_area,
        "area_diff": pred_area - true_area,
        "phi": phi.reshape(n, -1).mean(axis=1),
        "phi_tumor": _region_mean(phi, g),
        "has_tumor": flat_g.any(axis=1).astype(np.float64),
    }
    qs = np.percentile(bce.reshape(n, -1), QUANTILES, axis=1)  # (len(QUANTILES), N)
    for q, row in zip(QUANTILES, qs, strict=True):
        cols[f"bce_q{q}"] = row
    return np.stack([cols[name] for name in FEATURE_NAMES], axis=1)
