"""Train the mask-conditioned denoiser from scratch on procedural slices (DDPM, epsilon loss).

The training slices are the procedural generator's own (all five sites in turn, ``train``
distribution) but drawn with ``cfg.diffusion_train_seed``, so the generator never sees a slice
of the benchmark's train/holdout/test splits. One step: pick a batch, draw t ~ U{0..T-1} and
noise, form x_t with the DDPM schedule, predict the noise from [x_t, mask] and the site label,
and minimise the MSE, weighted ``tumor_weight`` times higher in and around the tumour (the
region whose appearance the model must learn from few pixels). AdamW, linear warm-up, cosine
decay. Everything random comes from one CPU ``torch.Generator`` seeded from the config.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from tqdm import tqdm

from common.config import SITE_PRESETS, Config
from common.data.diffusion.model import (
    DiffusionModel,
    build_scheduler,
    build_unet,
    hu_to_unit,
    load_model,
    save_model,
)
from common.data.diffusion.options import TrainOptions
from common.data.generate import Slice, render_slice
from common.data.sites import resolve_sites

log = logging.getLogger(__name__)


def render_many(cfg: Config, n: int, seed: int, split: str = "train", desc: str = "") -> list:
    """``n`` procedural slices cycling over the five sites: slice k is site k % 5, index k // 5."""
    if n < 1:
        raise ValueError(f"need at least one slice, got n={n}")
    sites = resolve_sites(cfg.data)
    d = cfg.data
    out: list[Slice] = []
    for k in tqdm(range(n), desc=desc or f"procedural {split}", unit="slice", disable=None):
        i = k % len(sites)
        out.append(
            render_slice(seed, i, split, k // len(sites), sites[i], d.image_size, d.noise_ref_hu)
        )
    return out


def training_tensors(cfg: Config, slices: list[Slice]) -> dict[str, torch.Tensor]:
    """Model-space images (N,1,H,W), masks in {-1,1}, per-pixel loss weights and site labels."""
    dc = cfg.diffusion
    images = np.stack([s.image for s in slices])
    masks = np.stack([s.mask for s in slices])
    near = np.stack([ndimage.binary_dilation(m, iterations=2) for m in masks])
    return {
        "x0": torch.from_numpy(hu_to_unit(images, dc.hu_knots)).unsqueeze(1),
        "mask": torch.from_numpy(masks.astype(np.float32) * 2 - 1).unsqueeze(1),
        "weight": torch.from_numpy(1.0 + (dc.tumor_weight - 1.0) * near.astype(np.float32)),
        "site": torch.tensor([SITE_PRESETS.index(s.params["site"]) for s in slices]),
    }


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def denoise_loss(unet, scheduler, batch: dict, gen: torch.Generator, conditioned: bool):
    """Weighted epsilon-MSE of one batch (noise and timesteps drawn from ``gen``)."""
    x0 = batch["x0"]
    b = x0.shape[0]
    noise = torch.randn(x0.shape, generator=gen).to(x0.device)  # drawn on the CPU: reproducible
    t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=gen).to(x0.device)
    xt = scheduler.add_noise(x0, noise, t)
    labels = batch["site"] if conditioned else None
    eps = unet(torch.cat([xt, batch["mask"]], dim=1), t, class_labels=labels).sample
    w = batch["weight"].unsqueeze(1)
    return ((eps - noise) ** 2 * w).sum() / (w.sum() * eps.shape[1])


def _latest_checkpoint(out: Path) -> Path | None:
    ckpts = sorted((out / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    return ckpts[-1] if ckpts else None


def _plot_loss(losses: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, lw=0.4, alpha=0.4, label="per step")
    k = max(1, len(losses) // 50)
    smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
    ax.plot(steps[k - 1 :], smooth, lw=1.5, label=f"mean of {k}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("weighted ε-MSE")
    ax.set_title("diffusion training loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def train_diffusion(
    cfg: Config,
    out: str | Path,
    *,
    steps: int | None = None,
    resume: bool = False,
    slices: list[Slice] | None = None,
    device: str = "cpu",
) -> DiffusionModel:
    """Train the generator of ``cfg`` into the model directory ``out`` and return it.

    ``steps`` overrides ``diffusion.steps``; ``resume`` continues from the newest checkpoint in
    ``out/checkpoints``; ``slices`` replaces the procedural training set (tests, custom data);
    ``device`` is a torch device (random draws stay on the CPU generator either way).
    """
    dc = cfg.diffusion
    total = dc.steps if steps is None else steps
    if total < 1:
        raise ValueError(f"steps must be >= 1, got {total}")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not resume:
        raise FileExistsError(f"{out} is not empty; pass --resume to continue its training")
    out.mkdir(parents=True, exist_ok=True)
    size = cfg.data.image_size
    if slices is None:
        slices = render_many(cfg, dc.train_slices, cfg.diffusion_train_seed, desc="training set")
    data = training_tensors(cfg, slices)
    n = len(data["x0"])
    log.info(
        "training set: %d slices, %d with tumour", n, int((data["mask"] > 0).any(-1).any(-1).sum())
    )

    unet = build_unet(dc, size, seed=cfg.seed)
    scheduler = build_scheduler(dc)
    gen = torch.Generator().manual_seed(cfg.diffusion_train_seed)
    losses: list[float] = []
    start = 0
    ckpt = _latest_checkpoint(out) if resume else None
    if ckpt is not None:
        from diffusers import UNet2DModel

        unet = UNet2DModel.from_pretrained(
            ckpt / "unet", local_files_only=True, low_cpu_mem_usage=False
        )
        state = torch.load(ckpt / "state.pt", weights_only=True, map_location="cpu")
        gen.set_state(state["generator"])
        losses = json.loads((ckpt / "loss.json").read_text())
        start = len(losses)
        log.info("resuming from %s (step %d)", ckpt, start)
    n_params = sum(p.numel() for p in unet.parameters())
    unet.to(device)
    opt = torch.optim.AdamW(unet.parameters(), lr=dc.lr, weight_decay=0.0)
    if ckpt is not None:
        opt.load_state_dict(state["optimizer"])
    unet.train()
    t0 = time.perf_counter()
    bar = tqdm(
        range(start, total),
        desc="diffusion train",
        unit="step",
        initial=start,
        total=total,
        disable=None,
    )
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = dc.lr * lr_factor(step, dc.warmup_steps, total)
        idx = torch.randint(0, n, (min(dc.batch_size, n),), generator=gen)
        batch = {k: v[idx].to(device) for k, v in data.items()}
        loss = denoise_loss(unet, scheduler, batch, gen, dc.site_conditioning)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at step {step + 1}: lower diffusion.lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if (step + 1) % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if (step + 1) % dc.checkpoint_every == 0 and step + 1 < total:
            d = out / "checkpoints" / f"step-{step + 1}"
            unet.save_pretrained(d / "unet")
            torch.save(
                {"optimizer": opt.state_dict(), "generator": gen.get_state()}, d / "state.pt"
            )
            (d / "loss.json").write_text(json.dumps(losses))
    elapsed = time.perf_counter() - t0
    unet.eval().to("cpu")
    tail = losses[-max(1, min(100, len(losses) // 10)) :]
    meta = {
        "image_size": size,
        "site_names": list(SITE_PRESETS),
        "diffusion": dc.model_dump(mode="json"),
        "data": {
            "severity": cfg.data.severity,
            "stress": cfg.data.stress,
            "noise_ref_hu": cfg.data.noise_ref_hu,
            "window": list(cfg.data.window),
        },
        "profile": cfg.profile,
        "seed": cfg.seed,
        "train_seed": cfg.diffusion_train_seed,
        "train_slices": n,
        "steps": len(losses),
        "n_params": n_params,
        "final_loss": float(np.mean(tail)),
        "first_loss": float(np.mean(losses[: len(tail)])),
        "train_time_s": elapsed,
        "step_time_s": elapsed / (total - start) if total > start else None,
        "device": str(device),
    }
    model = DiffusionModel(unet, scheduler, meta)
    save_model(model, out)
    (out / "loss.json").write_text(json.dumps(losses))
    _plot_loss(losses, out / "loss.png")
    log.info(
        "trained %d steps in %.0f s, loss %.4f -> %.4f; saved to %s",
        len(losses),
        elapsed,
        meta["first_loss"],
        meta["final_loss"],
        out,
    )
    return model


def run_diffusion_train(args: TrainOptions) -> int:
    """`fedonco diffusion train`."""
    from common.config import resolve_config

    cfg = resolve_config(args.config, args.profile, args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = train_diffusion(cfg, args.out, steps=args.steps, resume=args.resume, device=args.device)
    m = model.meta
    per_step = f"{m['step_time_s']:.3f} s/step" if m["step_time_s"] else "no new steps"
    print(
        f"\nDiffusion model ({m['n_params'] / 1e6:.2f} M params, {m['image_size']}px) written "
        f"to {args.out}: {m['steps']} steps, {per_step}, loss "
        f"{m['first_loss']:.4f} -> {m['final_loss']:.4f} (loss.png)"
    )
    return 0


__all__ = ["load_model", "render_many", "run_diffusion_train", "train_diffusion"]
