"""Gradient / update inversion of what the server sees (Geiping et al. 2020, "Inverting Gradients").

The attacker is the aggregation server (honest-but-curious): it holds the global model it sent
in round r, the public recipe, and what the aggregation layer gives it for that round: one
site's update (secure aggregation off), only the sites' example-weighted sum (on), a DP site's
noised update, or distributed DP's noisy sum of clipped gradients. From that view it optimises a
batch of dummy slices and soft tumour masks whose loss gradient at the global model points the
same way as the observed one (cosine distance over every parameter, plus a total-variation
prior on the image), with several random restarts, and keeps the restart with the best match.

A weight update is turned into a gradient direction first: ``-delta`` (with plain SGD, one
local step, it IS ``lr`` times the batch's mean gradient; after several Adam steps it is only a
proxy, which is where the attack is expected to stop working). Distributed DP's view is already
a (noisy) gradient sum.

No analytic shortcut applies to this model: the U-Net has no fully connected layer (the
bias-ratio trick of Phong et al. / Geiping's label-free input recovery from a linear layer needs
one), and the "label" is a whole mask, so the mask is optimised jointly with the image.

What it reaches (``bench/perf/probe_inversion.py``; tests/unit/test_inversion.py): through a
per-pixel linear layer one slice comes back (PSNR > 20 dB, its mask exactly); on the profile's
U-Net it does not, even from one slice's exact gradient: the gradient cosine reaches > 0.99
while the image stays a blob (a convolution's weight gradient sums input patch × error over
positions and loses the layout; the error is concentrated on the tumour). docs/threat-model.md.

Scoring (the benchmark's job, ``match_reconstructions``): each true slice of the victim's round
is paired with its best reconstruction (windowed [0, 1] images): PSNR, SSIM (Gaussian window,
Wang et al. 2004), and the Dice of the reconstructed mask (thresholded at 0.5) against that
slice's true mask; a slice counts as recovered at ``RECOVERED_PSNR`` dB or above.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from common.metrics import seg_loss

log = logging.getLogger(__name__)

RECOVERED_PSNR = 20.0  # dB on the [0, 1] window: at 20 dB a 64x64 slice's anatomy is legible
TV_WEIGHT = 1e-3


@dataclass(frozen=True)
class InversionSettings:
    """The attacker's optimisation budget (public, fixed before any run; not tuned per target)."""

    n_images: int = 1  # how many slices to reconstruct (a FedSGD site's batch size is public)
    steps: int = 400
    restarts: int = 2
    lr: float = 0.05
    tv_weight: float = TV_WEIGHT
    seed: int = 0


@dataclass
class Inversion:
    images: np.ndarray  # (B, H, W) in [0, 1] (the model's input window)
    masks: np.ndarray  # (B, H, W) soft tumour masks in [0, 1]
    cosine: float  # the best restart's gradient cosine similarity with the view (1 = exact)
    per_restart: list[float]


def _tv(x: torch.Tensor) -> torch.Tensor:
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (
        x[..., :, 1:] - x[..., :, :-1]
    ).abs().mean()


def invert(
    model: nn.Module,
    direction: Mapping[str, np.ndarray],
    image_size: int,
    settings: InversionSettings = InversionSettings(),
    known_masks: np.ndarray | None = None,
) -> Inversion:
    """Reconstruct ``settings.n_images`` (image, mask) pairs whose mean loss gradient at ``model``
    (its current weights, in train mode as at a site) best matches ``direction`` (parameter name
    -> the observed gradient direction; names the model lacks are an error, parameters without
    an entry are left out of the match). ``known_masks`` (B, H, W): hand the attacker the true
    masks (an upper bound for probes: only the images are optimised)."""
    names = [n for n, _ in model.named_parameters() if n in direction]
    unknown = set(direction) - {n for n, _ in model.named_parameters()}
    if unknown:
        raise ValueError(
            f"the view holds entries the model has no parameter for: {sorted(unknown)[:3]}"
        )
    if not names:
        raise ValueError("the view holds no parameter of the model")
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    target = [torch.as_tensor(np.asarray(direction[n]), dtype=torch.float32) for n in names]
    t_norm = torch.sqrt(sum((t * t).sum() for t in target))
    if not torch.isfinite(t_norm) or t_norm == 0:
        raise ValueError("the view is zero or not finite: nothing to invert")
    model.train()
    gen = torch.Generator().manual_seed(settings.seed)
    shape = (settings.n_images, 1, image_size, image_size)
    best: tuple[float, torch.Tensor, torch.Tensor] | None = None
    per_restart = []
    for _ in range(settings.restarts):
        x_raw = torch.rand(shape, generator=gen).requires_grad_(True)  # the image, kept in [0, 1]
        m_raw = torch.randn(shape, generator=gen).mul_(0.1).sub_(2.0)
        if known_masks is not None:  # logits that the sigmoid maps to the masks (to ~1e-7)
            m_raw = torch.from_numpy(np.asarray(known_masks, np.float32)).unsqueeze(1) * 32 - 16
        m_raw.requires_grad_(known_masks is None)
        opt = torch.optim.Adam([x_raw, m_raw] if known_masks is None else [x_raw], lr=settings.lr)
        sched = torch.optim.lr_scheduler.MultiStepLR(
            opt, [int(settings.steps * f) for f in (0.375, 0.625, 0.875)], gamma=0.1
        )
        for _step in range(settings.steps):
            opt.zero_grad(set_to_none=True)
            cos = _cosine(model, params, buffers, names, target, t_norm, x_raw, m_raw)
            loss = (1 - cos) + settings.tv_weight * _tv(x_raw)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                x_raw.clamp_(0, 1)
        cos = float(_cosine(model, params, buffers, names, target, t_norm, x_raw, m_raw).detach())
        per_restart.append(cos)
        if best is None or cos > best[0]:
            best = (cos, x_raw.detach().clone(), m_raw.detach().clone())
    assert best is not None
    cos, x_raw, m_raw = best
    return Inversion(
        images=x_raw[:, 0].numpy(),
        masks=torch.sigmoid(m_raw)[:, 0].numpy(),
        cosine=cos,
        per_restart=per_restart,
    )


def _cosine(model, params, buffers, names, target, t_norm, x_raw, m_raw) -> torch.Tensor:
    """Cosine similarity between the dummy batch's loss gradient and the observed direction."""
    x, y = x_raw, torch.sigmoid(m_raw)
    live = {n: params[n].clone().requires_grad_(True) for n in names}
    out = functional_call(
        model, ({**params, **live}, {k: v.clone() for k, v in buffers.items()}), (x,)
    )
    grads = torch.autograd.grad(seg_loss(out, y), [live[n] for n in names], create_graph=True)
    dot = sum((g * t).sum() for g, t in zip(grads, target, strict=True))
    g_norm = torch.sqrt(sum((g * g).sum() for g in grads) + 1e-20)
    return dot / (g_norm * t_norm)


# ---------------------------------------------------------------------------------------------
# Scoring (the benchmark's side: it knows the victim's true slices)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two [0, 1] images (peak 1)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


def ssim(a: np.ndarray, b: np.ndarray, sigma: float = 1.5) -> float:
    """Mean SSIM of two [0, 1] images with an 11x11 Gaussian window (Wang et al. 2004)."""
    from scipy.ndimage import gaussian_filter

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    c1, c2 = 0.01**2, 0.03**2
    f = lambda z: gaussian_filter(z, sigma, truncate=3.5)  # noqa: E731 (radius 5: 11x11)
    mu_a, mu_b = f(a), f(b)
    var_a, var_b = f(a * a) - mu_a**2, f(b * b) - mu_b**2
    cov = f(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    return float(s.mean())


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    denom = a.sum() + b.sum()
    return 1.0 if denom == 0 else float(2 * (a & b).sum() / denom)


def match_reconstructions(
    recon_images: np.ndarray,
    recon_masks: np.ndarray,
    true_images: np.ndarray,
    true_masks: np.ndarray,
    threshold: float = RECOVERED_PSNR,
) -> dict:
    """Pair each true slice (windowed, [0, 1]) with its best reconstruction by PSNR and report
    per slice and overall: psnr, ssim, mask Dice, and the fraction of true slices recovered at
    ``threshold`` dB or above."""
    recon_images, true_images = np.asarray(recon_images), np.asarray(true_images)
    if recon_images.ndim != 3 or true_images.ndim != 3:
        raise ValueError("images must be (N, H, W)")
    rows = []
    for img, mask in zip(true_images, true_masks, strict=True):
        scores = [psnr(r, img) for r in recon_images]
        j = int(np.argmax(scores))
        rows.append(
            {
                "psnr": scores[j],
                "ssim": ssim(recon_images[j], img),
                "mask_dice": _dice(recon_masks[j] >= 0.5, mask),
            }
        )
    psnrs = np.array([r["psnr"] for r in rows])
    return {
        "psnr_mean": float(psnrs.mean()),
        "psnr_max": float(psnrs.max()),
        "ssim_mean": float(np.mean([r["ssim"] for r in rows])),
        "mask_dice_mean": float(np.mean([r["mask_dice"] for r in rows])),
        "recovered_fraction": float((psnrs >= threshold).mean()),
        "threshold_db": threshold,
        "n_true": len(rows),
        "per_slice": rows,
    }
