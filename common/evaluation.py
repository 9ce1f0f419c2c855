"""Evaluate a segmentation model on slices: per-site additive sums, pooled metrics.

Used by the server (the global model on the test split of every site) and, for FedBN, by each
site (shared weights + its own normalisation layers on its own test slices). Both produce
``SegMetrics.sums()`` per site, so the pooled numbers are computed the same way either way.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from common.data.loader import window_hu
from common.metrics import SegMetrics, metrics_from_sums, pool_sums


@torch.no_grad()
def predict_probs(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """Tumor probabilities (N, 1, H, W) for windowed images (N, 1, H, W) in [0, 1]."""
    was = model.training
    model.eval()
    out = [
        torch.sigmoid(model(images[i : i + batch_size])) for i in range(0, len(images), batch_size)
    ]
    model.train(was)
    return torch.cat(out).numpy() if out else np.zeros((0, *images.shape[1:]), np.float32)


def to_inputs(images_hu: np.ndarray, window) -> torch.Tensor:
    return torch.from_numpy(window_hu(images_hu, window)).unsqueeze(1)


def evaluate_sums(model: nn.Module, inputs: torch.Tensor, masks: np.ndarray, batch_size: int = 64):
    """``SegMetrics.sums()`` of one set of slices."""
    acc = SegMetrics()
    if len(inputs):
        acc.update(predict_probs(model, inputs, batch_size), masks[:, None].astype(np.uint8))
    return acc.sums()


def summarize(per_site_sums: dict[str, dict[str, float]]) -> dict:
    """Per-site metrics, the pooled metrics over all sites, and the unweighted mean over sites."""
    per_site = {s: metrics_from_sums(v) for s, v in sorted(per_site_sums.items())}
    pooled = metrics_from_sums(pool_sums(list(per_site_sums.values()))) if per_site_sums else {}
    dices = [m["dice"] for m in per_site.values() if not np.isnan(m["dice"])]
    return {
        "per_site": per_site,
        "overall": pooled,
        "dice_site_mean": float(np.mean(dices)) if dices else float("nan"),
    }
