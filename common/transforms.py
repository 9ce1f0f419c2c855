"""From HU slices to model inputs and back to probabilities: one fixed window for every image.

Every place that runs a model on CT slices (evaluation at the server and the sites, the
Inference service, the attacker's shadow models, the diffusion report) goes through these, so
they all see the same inputs: ``data.window`` (default W400/L40 -> [-160, 240] HU) mapped to
[0, 1], never per-image normalisation.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def window_hu(images: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """HU -> float32 in [0, 1] with a fixed window [lo, hi]."""
    lo, hi = window
    return ((np.clip(images.astype(np.float32), lo, hi) - lo) / (hi - lo)).astype(np.float32)


def to_inputs(images_hu: np.ndarray, window) -> torch.Tensor:
    """HU slices (N, H, W) -> model inputs (N, 1, H, W) in [0, 1]."""
    return torch.from_numpy(window_hu(images_hu, window)).unsqueeze(1)


@torch.no_grad()
def predict_probs(model: nn.Module, inputs: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """Tumor probabilities (N, 1, H, W) for model inputs (N, 1, H, W), in eval mode (the model's
    mode is restored afterwards). Each batch runs on the device of the model's parameters; the
    probabilities come back on the CPU."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    out = [
        torch.sigmoid(model(inputs[i : i + batch_size].to(device))).cpu()
        for i in range(0, len(inputs), batch_size)
    ]
    model.train(was)
    return torch.cat(out).numpy() if out else np.zeros((0, *inputs.shape[1:]), np.float32)


def predict_hu(model: nn.Module, images_hu: np.ndarray, window, batch_size: int = 64) -> np.ndarray:
    """Window -> model -> sigmoid: probabilities (N, H, W) float32 for HU slices (N, H, W)."""
    return predict_probs(model, to_inputs(images_hu, window), batch_size)[:, 0].astype(np.float32)
