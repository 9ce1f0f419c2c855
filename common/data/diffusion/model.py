"""The denoiser (a diffusers ``UNet2DModel``), the HU <-> model-space map, and the model directory.

Conditioning: the network sees two channels, the noisy slice and the tumour mask in {-1, +1}, and
the site (0-4) as a class label, so the five scanners stay distinguishable. A model directory is::

    unet/                 UNet2DModel.save_pretrained (config.json + safetensors)
    scheduler/            the DDPM training schedule (DDIM sampling is built from its config)
    diffusion.json        image size, HU map, the resolved diffusion config, training summary
    loss.json, loss.png   the training curve
    checkpoints/step-N/   intermediate models (+ optimizer state, for --resume)
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import common.data.diffusion  # noqa: F401  (sets HF_HUB_OFFLINE before diffusers is imported)
from common.config import DiffusionConfig

log = logging.getLogger(__name__)

META = "diffusion.json"
WEIGHTS = "unet/diffusion_pytorch_model.safetensors"
# Model-space values of the HU knots: soft tissue gets 80% of the range, air and bone the rest.
UNIT_KNOTS = (-1.0, -0.8, 0.8, 1.0)


def hu_to_unit(hu: np.ndarray, knots) -> np.ndarray:
    """HU -> [-1, 1], piecewise linear through ``knots`` (clipped outside [k0, k3])."""
    return np.interp(np.asarray(hu, np.float32), knots, UNIT_KNOTS).astype(np.float32)


def unit_to_hu(x: np.ndarray, knots) -> np.ndarray:
    """The inverse of :func:`hu_to_unit` on [-1, 1]."""
    return np.interp(np.asarray(x, np.float32), UNIT_KNOTS, knots).astype(np.float32)


def build_unet(dc: DiffusionConfig, size: int, seed: int = 0):
    """A fresh UNet2DModel for ``size``x``size`` slices; weights depend only on ``seed``."""
    from diffusers import UNet2DModel

    if size % (2 ** (len(dc.block_out_channels) - 1)):
        raise ValueError(
            f"image size {size} is not divisible by 2^{len(dc.block_out_channels) - 1} "
            f"(one downsampling per level of block_out_channels {dc.block_out_channels})"
        )
    n = len(dc.block_out_channels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DModel(
            sample_size=size,
            in_channels=2,
            out_channels=1,
            layers_per_block=dc.layers_per_block,
            block_out_channels=dc.block_out_channels,
            down_block_types=("DownBlock2D",) * n,
            up_block_types=("UpBlock2D",) * n,
            norm_num_groups=dc.norm_num_groups,
            add_attention=dc.attention,
            num_class_embeds=5 if dc.site_conditioning else None,
        )


def build_scheduler(dc: DiffusionConfig):
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=dc.num_train_timesteps,
        beta_schedule=dc.beta_schedule,
        prediction_type="epsilon",
        clip_sample=True,
    )


@dataclass
class DiffusionModel:
    """A trained (or loaded) generator: network, training schedule and its metadata."""

    unet: torch.nn.Module
    scheduler: object  # diffusers.DDPMScheduler
    meta: dict

    @property
    def config(self) -> DiffusionConfig:
        return DiffusionConfig.model_validate(self.meta["diffusion"])

    @property
    def size(self) -> int:
        return int(self.meta["image_size"])

    @property
    def knots(self) -> tuple[float, ...]:
        return tuple(self.meta["diffusion"]["hu_knots"])


def save_model(model: DiffusionModel, out: str | Path) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.unet.save_pretrained(out / "unet")
    model.scheduler.save_pretrained(out / "scheduler")
    (out / META).write_text(json.dumps(model.meta, indent=1, sort_keys=True) + "\n")


def model_sha256(model_dir: str | Path) -> str:
    """sha256 of the saved weights: what a dataset's manifest records about its generator."""
    path = Path(model_dir) / WEIGHTS
    if not path.is_file():
        raise ValueError(f"{model_dir}: no {WEIGHTS}; train one with `fedonco diffusion train`")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_model(model_dir: str | Path) -> DiffusionModel:
    """Load a model directory written by :func:`save_model`, from local files only, in eval mode."""
    from diffusers import DDPMScheduler, UNet2DModel

    model_dir = Path(model_dir)
    if not (model_dir / META).is_file() or not (model_dir / WEIGHTS).is_file():
        raise ValueError(
            f"{model_dir} is not a diffusion model directory (needs {META} and {WEIGHTS}); "
            "train one with `fedonco diffusion train`"
        )
    unet = UNet2DModel.from_pretrained(
        model_dir / "unet", local_files_only=True, low_cpu_mem_usage=False
    )
    scheduler = DDPMScheduler.from_pretrained(model_dir / "scheduler", local_files_only=True)
    unet.eval()
    meta = json.loads((model_dir / META).read_text())
    return DiffusionModel(unet, scheduler, meta)
