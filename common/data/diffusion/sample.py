"""DDIM sampling conditioned on tumour masks and sites (a custom loop: DDPMPipeline takes no
condition), whole-slice or inpainted around the tumour and composited onto a background.

Seeding: every slice has its own CPU ``torch.Generator`` (one integer seed per slice), which
draws its starting noise and, when inpainting, the noise of its known background. DDIM with
eta = 0 draws nothing else, so a slice depends on its seed, mask, site and background only; the
batch it is computed in changes the result by float rounding at most (~1e-6).

Composite mode (DiffTumor's recipe, RePaint-style on a model that was trained on whole slices):
the region R = the mask dilated by ``dilate_px`` is generated; outside R, x_t is replaced at every
step by the background noised to the same timestep, so the generated tumour is harmonised with
the real surroundings; at the end, ``w * sample + (1 - w) * background`` with w = R blurred by
``blur_px`` (and w = 1 on the mask itself), so pixels far from the tumour keep the procedural
slice exactly.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from common.data.diffusion.model import DiffusionModel, hu_to_unit, unit_to_hu


def composite_weight(
    mask: np.ndarray, dilate_px: int, blur_px: float
) -> tuple[np.ndarray, np.ndarray]:
    """(hard generated region R, soft blend weight w) for one (H, W) mask; both float32."""
    m = mask.astype(bool)
    region = ndimage.binary_dilation(m, iterations=dilate_px) if dilate_px > 0 else m
    w = region.astype(np.float32)
    if blur_px > 0:
        w = ndimage.gaussian_filter(w, blur_px)
    w = np.maximum(w, m.astype(np.float32))
    return region.astype(np.float32), w


def _check(model: DiffusionModel, masks: np.ndarray, sites: np.ndarray, seeds) -> None:
    size = model.size
    if masks.ndim != 3 or masks.shape[1:] != (size, size):
        raise ValueError(f"masks must be (N, {size}, {size}) for this model, got {masks.shape}")
    if len(sites) != len(masks) or len(seeds) != len(masks):
        raise ValueError(f"{len(masks)} masks but {len(sites)} sites and {len(seeds)} seeds")
    if len(sites) and (int(np.min(sites)) < 0 or int(np.max(sites)) > 4):
        raise ValueError("site labels must be 0-4 (A-E)")


@torch.no_grad()
def sample_unit(
    model: DiffusionModel,
    masks: np.ndarray,
    sites: np.ndarray,
    seeds: list[int],
    *,
    steps: int,
    known: np.ndarray | None = None,
    region: np.ndarray | None = None,
    progress: bool = False,
) -> np.ndarray:
    """DDIM samples in model space, (N, H, W) float32 in [-1, 1].

    ``known``/``region`` (both (N, H, W), model space / {0, 1}) switch on inpainting: outside
    ``region`` the trajectory follows ``known`` noised to the current timestep.
    """
    from diffusers import DDIMScheduler
    from tqdm import tqdm

    masks = np.asarray(masks)
    sites = np.asarray(sites, dtype=np.int64)
    _check(model, masks, sites, seeds)
    if steps < 1:
        raise ValueError(f"DDIM steps must be >= 1, got {steps}")
    n, size = len(masks), model.size
    if n == 0:
        return np.zeros((0, size, size), np.float32)
    sched = DDIMScheduler.from_config(model.scheduler.config)
    sched.set_timesteps(steps)
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]

    def noise() -> torch.Tensor:
        return torch.stack([torch.randn((1, size, size), generator=g) for g in gens])

    dev = next(model.unet.parameters()).device  # noise is drawn on the CPU, then moved
    cond = torch.from_numpy(masks.astype(np.float32) * 2 - 1).unsqueeze(1).to(dev)
    labels = torch.from_numpy(sites).to(dev) if model.unet.config.num_class_embeds else None
    x = noise().to(dev)
    if known is not None:
        if region is None or known.shape != masks.shape or region.shape != masks.shape:
            raise ValueError("inpainting needs known and region of the masks' shape")
        k0 = torch.from_numpy(np.asarray(known, np.float32)).unsqueeze(1).to(dev)
        r = torch.from_numpy(np.asarray(region, np.float32)).unsqueeze(1).to(dev)
    model.unet.eval()
    for t in tqdm(sched.timesteps, desc="DDIM", unit="step", disable=not progress or None):
        if known is not None:
            x = r * x + (1 - r) * sched.add_noise(k0, noise().to(dev), t.reshape(1))
        eps = model.unet(torch.cat([x, cond], dim=1), t, class_labels=labels).sample
        x = sched.step(eps, t, x, eta=0.0).prev_sample
    if known is not None:
        x = r * x + (1 - r) * k0
    return x.squeeze(1).clamp(-1, 1).float().cpu().numpy()


def generate_hu(
    model: DiffusionModel,
    masks: np.ndarray,
    sites: np.ndarray,
    seeds: list[int],
    *,
    mode: str,
    steps: int,
    background_hu: np.ndarray | None = None,
    dilate_px: int = 2,
    blur_px: float = 1.0,
    progress: bool = False,
) -> np.ndarray:
    """Slices in HU, (N, H, W) int16, each paired exactly with its conditioning mask.

    ``mode="whole"``: the entire slice is generated. ``mode="composite"``: only the dilated
    tumour region is generated on ``background_hu`` (procedural slices) and blended back.
    """
    knots = model.knots
    if mode == "whole":
        x = sample_unit(model, masks, sites, seeds, steps=steps, progress=progress)
        hu = unit_to_hu(x, knots)
    elif mode == "composite":
        if background_hu is None or background_hu.shape != np.shape(masks):
            raise ValueError("composite mode needs background_hu of the masks' shape")
        pairs = [composite_weight(m, dilate_px, blur_px) for m in masks]
        region = np.stack([p[0] for p in pairs]) if pairs else np.zeros(np.shape(masks))
        w = np.stack([p[1] for p in pairs]) if pairs else np.zeros(np.shape(masks))
        known = hu_to_unit(background_hu, knots)
        x = sample_unit(
            model, masks, sites, seeds, steps=steps, known=known, region=region, progress=progress
        )
        hu = w * unit_to_hu(x, knots) + (1 - w) * background_hu.astype(np.float32)
    else:
        raise ValueError(f"unknown mode {mode!r}; use 'whole' or 'composite'")
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
