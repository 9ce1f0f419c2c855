"""Segmentation metrics (numpy, evaluation) and the training loss (torch).

Conventions (all on one slice = one image; inputs are tumor probabilities in [0, 1] and binary
masks, shaped (N, H, W) or (N, 1, H, W)):

- A pixel is predicted tumor when ``prob > threshold`` (0.5, i.e. logit > 0).
- ``dice`` (the primary): hard Dice 2|P∩G| / (|P| + |G|) computed per image and averaged over the
  images whose mask contains tumor. Tumor-free images are excluded (their Dice is 0/0); NaN when
  there is no tumor image at all.
- ``dice_global``: one hard Dice over all pixels of all images (sums over the whole set), so large
  tumors weigh more. 1.0 when both the prediction and the masks are empty everywhere.
- ``fp_rate_empty``: over tumor-free images, the fraction with at least one predicted tumor
  pixel. NaN when there is no tumor-free image.
- ``ce_loss``: mean per-pixel binary cross-entropy, probabilities clipped to [eps, 1 - eps].

``SegMetrics`` accumulates these over batches, so a test set never has to sit in memory at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

EPS = 1e-7


def _flatten(probs: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs, masks = np.asarray(probs), np.asarray(masks)
    if probs.shape != masks.shape:
        raise ValueError(f"probs shape {probs.shape} != masks shape {masks.shape}")
    if probs.ndim not in (3, 4) or (probs.ndim == 4 and probs.shape[1] != 1):
        raise ValueError(f"expected (N, H, W) or (N, 1, H, W), got {probs.shape}")
    if probs.size and (np.isnan(probs).any() or probs.min() < 0 or probs.max() > 1):
        raise ValueError("probs must be probabilities in [0, 1] (apply a sigmoid to logits)")
    if masks.size and not np.isin(masks, (0, 1)).all():
        raise ValueError("masks must be binary (0 or 1)")
    n = probs.shape[0]
    return probs.reshape(n, -1).astype(np.float64), masks.reshape(n, -1).astype(bool)


@dataclass
class SegMetrics:
    """Accumulates the metrics above over batches; ``compute()`` returns them as a dict."""

    threshold: float = 0.5
    per_image_dice: list[float] = field(default_factory=list)  # tumor images only
    intersection: int = 0
    pred_sum: int = 0
    true_sum: int = 0
    empty_images: int = 0
    empty_with_fp: int = 0
    bce_sum: float = 0.0
    pixels: int = 0

    def update(self, probs: np.ndarray, masks: np.ndarray) -> None:
        p, g = _flatten(probs, masks)
        pred = p > self.threshold
        inter = (pred & g).sum(axis=1)
        psum, gsum = pred.sum(axis=1), g.sum(axis=1)
        tumor = gsum > 0
        self.per_image_dice += (2.0 * inter[tumor] / (psum[tumor] + gsum[tumor])).tolist()
        self.intersection += int(inter.sum())
        self.pred_sum += int(psum.sum())
        self.true_sum += int(gsum.sum())
        self.empty_images += int((~tumor).sum())
        self.empty_with_fp += int(((psum > 0) & ~tumor).sum())
        pc = np.clip(p, EPS, 1 - EPS)
        self.bce_sum += float(-(np.where(g, np.log(pc), np.log1p(-pc))).sum())
        self.pixels += p.size

    def sums(self) -> dict[str, float]:
        """Additive counters: the sums of several sites (or batches) pool exactly."""
        return {
            "dice_sum": float(np.sum(self.per_image_dice)),
            "tumor_images": float(len(self.per_image_dice)),
            "intersection": float(self.intersection),
            "pred_sum": float(self.pred_sum),
            "true_sum": float(self.true_sum),
            "empty_images": float(self.empty_images),
            "empty_with_fp": float(self.empty_with_fp),
            "bce_sum": self.bce_sum,
            "pixels": float(self.pixels),
        }

    def compute(self) -> dict[str, float]:
        return metrics_from_sums(self.sums())


SUM_KEYS = tuple(SegMetrics().sums())


# ----------------------------------------------------------------------------------------------
# What a site may report: one table. The server's allow-list at the service edge
# (server/validation.py) is built from it, and tests/unit/test_validation.py checks that what each
# emitter sends (train_local, the DP site, distributed DP's noisy sum, the client's timings,
# the evaluation sums) is in it: a metric a site starts to send without a row here fails there.


@dataclass(frozen=True)
class SiteMetric:
    """One metric a site may report: a number in [lo, hi] or text of at most ``hi`` characters."""

    kind: Literal["number", "text"]
    lo: float
    hi: float
    summary: str


HUGE = 1e15  # counts, bytes and seconds far beyond any real run, still finite
MAX_HISTORY_TEXT = 20_000  # characters of a reported DP mechanism history: far above any run's


def _n(summary: str, lo: float = 0.0, hi: float = HUGE) -> SiteMetric:
    return SiteMetric("number", lo, hi, summary)


def _t(summary: str, hi: int) -> SiteMetric:
    return SiteMetric("text", 0, hi, summary)


FIT_METRICS: dict[str, SiteMetric] = {  # a fit (plain or masked upload: its advertisement)
    "loss": _n("mean training loss of the last local epoch"),
    "prox": _n("mean FedProx term of the last local epoch"),
    "steps": _n("optimizer steps of the round"),
    "examples_last_epoch": _n("slices seen in the last local epoch"),
    "num_examples": _n("the site's training-set size (its FedAvg weight)"),
    "train_time_s": _n("seconds of local training"),
    "decode_s": _n("seconds decoding the global model"),
    "encode_s": _n("seconds encoding the update"),
    "bytes_up": _n("bytes of the update on the wire"),
    # DP-SGD (client/dp_site.py: the public part of the round's report; ε covers it)
    "sample_rate": _n("Poisson sampling rate q", 0, 1),
    "noise_multiplier": _n("sigma"),
    "max_grad_norm": _n("clipping norm C"),
    "delta": _n("delta", 0, 1),
    "epsilon": _n("epsilon after the round (an exhausted budget may read inf)", 0, float("inf")),
    "accountant": _t("accountant name", 16),
    "adjacency": _t("neighbouring relation (common.training.dp.adjacency)", 16),
    "randomness": _t("where the DP noise came from (common.training.dp.randomness)", 24),
    "attempt": _n("how often the site started this round (fresh noise each)", 1),
    "steps_total": _n("DP steps over the run"),
    "accountant_history": _t("the site's whole mechanism history (JSON)", MAX_HISTORY_TEXT),
    "device": _t("where the site trained (common/device.py: cpu, cuda:N)", 16),
    "gpu": _t("its GPU's name, on CUDA only", 64),
}
MASKED_METRICS: dict[str, SiteMetric] = {  # a masked input of secure aggregation
    "mask_s": _n("seconds masking the update"),
    "clipped": _n("entries clipped before quantisation"),
    "bytes_up": _n("bytes of the masked vector"),
}
EVAL_METRICS: dict[str, SiteMetric] = {k: _n(f"evaluation sum {k}") for k in SUM_KEYS}


def pool_sums(parts: list[dict[str, float]]) -> dict[str, float]:
    """Add up ``SegMetrics.sums()`` of several sites."""
    return {k: float(sum(p[k] for p in parts)) for k in SUM_KEYS}


def metrics_from_sums(s: dict[str, float]) -> dict[str, float]:
    """The metrics of the module docstring from (possibly pooled) additive counters."""
    denom = s["pred_sum"] + s["true_sum"]
    return {
        "dice": s["dice_sum"] / s["tumor_images"] if s["tumor_images"] else float("nan"),
        "dice_global": 2.0 * s["intersection"] / denom if denom else 1.0,
        "fp_rate_empty": (
            s["empty_with_fp"] / s["empty_images"] if s["empty_images"] else float("nan")
        ),
        "ce_loss": s["bce_sum"] / s["pixels"] if s["pixels"] else float("nan"),
        "n_tumor_images": s["tumor_images"],
        "n_empty_images": s["empty_images"],
    }


def segmentation_metrics(
    probs: np.ndarray, masks: np.ndarray, threshold: float = 0.5
) -> dict[str, float]:
    """All metrics of this module for one set of images (see the module docstring)."""
    acc = SegMetrics(threshold=threshold)
    acc.update(probs, masks)
    return acc.compute()


# ----------------------------------------------------------------------------------------------
# training loss
# ----------------------------------------------------------------------------------------------


def seg_loss(
    logits: torch.Tensor,
    masks: torch.Tensor,
    *,
    reduction: Literal["mean", "none"] = "mean",
    smooth: float = 1.0,
) -> torch.Tensor:
    """BCE + soft-Dice loss, computed PER IMAGE, then averaged (or not) over the batch.

    Each image's loss depends on that image only (mean pixel BCE + 1 - soft Dice with additive
    ``smooth``), so the batch loss is a mean of per-sample losses: what DP-SGD's per-sample
    gradients require. A tumor-free image with an empty prediction has a soft Dice close to 1.
    ``reduction="none"`` returns one loss per image, shape (B,).
    """
    if logits.shape != masks.shape:
        raise ValueError(f"logits shape {tuple(logits.shape)} != masks {tuple(masks.shape)}")
    if logits.dim() < 2:
        raise ValueError(f"expected a batch of images (B, ...), got {tuple(logits.shape)}")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    b = logits.shape[0]
    x, y = logits.reshape(b, -1), masks.reshape(b, -1).to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(x, y, reduction="none").mean(dim=1)
    p = torch.sigmoid(x)
    soft_dice = (2.0 * (p * y).sum(dim=1) + smooth) / (p.sum(dim=1) + y.sum(dim=1) + smooth)
    loss = bce + (1.0 - soft_dice)
    return loss if reduction == "none" else loss.mean()
