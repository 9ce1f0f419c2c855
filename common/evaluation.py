"""Evaluate a segmentation model on slices: per-site additive sums, pooled metrics.

Used by the server (the global model on the test split of every site) and, for FedBN, by each
site (shared weights + its own normalisation layers on its own test slices). Both produce
``SegMetrics.sums()`` per site, so the pooled numbers are computed the same way either way.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from common.metrics import SegMetrics, metrics_from_sums, pool_sums
from common.transforms import predict_probs


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
