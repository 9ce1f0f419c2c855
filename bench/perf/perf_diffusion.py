"""Diffusion generator speed on this machine: training step time and sampling time per slice.

    python bench/perf/perf_diffusion.py [--config configs/diffusion-small.toml] [--model DIR]
                                   [--device cpu] [--steps 20] [--n 32]

Times do not depend on the weights, so without --model a freshly initialised network of the
config is measured. Reported: one optimizer step (the config's batch), DDIM sampling of whole
slices at batch 1 and at the config's sample_batch, composite sampling per tumour slice, and the
procedural generator for the same slices as the baseline. Medians over interleaved repeats
(the first seconds of a run are slower on these machines).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

from common.config import load_config
from common.data.diffusion.model import DiffusionModel, build_scheduler, build_unet, load_model
from common.data.diffusion.sample import generate_hu
from common.data.diffusion.train import denoise_loss, render_many, training_tensors


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up (allocations, kernels)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config", default="configs/diffusion-small.toml")
    ap.add_argument("--model", help="trained model dir (default: a fresh network of the config)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=10, help="timed training steps")
    ap.add_argument("--n", type=int, default=32, help="slices to sample per measurement")
    ap.add_argument("--threads", type=int, help="torch threads")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    dc, size = cfg.diffusion, cfg.data.image_size
    slices = render_many(cfg, max(args.n, dc.batch_size), 1234, split="test")
    t = time.perf_counter()
    render_many(cfg, args.n, 4321, split="test")
    procedural = (time.perf_counter() - t) / args.n

    unet = build_unet(dc, size).to(args.device)
    sched = build_scheduler(dc)
    data = training_tensors(cfg, slices[: dc.batch_size])
    batch = {k: v.to(args.device) for k, v in data.items()}
    opt = torch.optim.AdamW(unet.parameters(), lr=dc.lr)
    gen = torch.Generator().manual_seed(0)

    def step():
        loss = denoise_loss(unet, sched, batch, gen, dc.site_conditioning)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    train_step = _median_time(step, args.steps)
    model = (
        load_model(args.model)
        if args.model
        else DiffusionModel(
            unet.eval(), sched, {"image_size": size, "diffusion": dc.model_dump(mode="json")}
        )
    )
    model.unet.to(args.device)
    masks = np.stack([s.mask for s in slices[: args.n]])
    bg = np.stack([s.image for s in slices[: args.n]])
    sites = np.arange(args.n) % 5
    tumour = np.flatnonzero(masks.reshape(args.n, -1).any(1))
    seeds = list(range(args.n))

    def sample(mode: str, ids, batch: int):
        for k in range(0, len(ids), batch):
            j = ids[k : k + batch]
            generate_hu(
                model,
                masks[j],
                sites[j],
                [seeds[i] for i in j],
                mode=mode,
                steps=dc.ddim_steps,
                background_hu=bg[j],
                dilate_px=dc.dilate_px,
                blur_px=dc.blur_px,
            )

    ids = np.arange(args.n)
    few = ids[: max(1, args.n // 8)]
    rows = [
        ("procedural slice (baseline)", procedural),
        (f"train step, batch {dc.batch_size}", train_step),
        ("whole slice, batch 1", _median_time(lambda: sample("whole", few, 1), 1) / len(few)),
        (
            f"whole slice, batch {dc.sample_batch}",
            _median_time(lambda: sample("whole", ids, dc.sample_batch), 2) / args.n,
        ),
        (
            f"composite, per tumour slice, batch {dc.sample_batch}",
            _median_time(lambda: sample("composite", tumour, dc.sample_batch), 2)
            / max(1, len(tumour)),
        ),
    ]
    n_params = sum(p.numel() for p in unet.parameters())
    print(
        f"\nDiffusion generator, {args.config}: {size}x{size}, {n_params / 1e6:.2f} M params, "
        f"DDIM {dc.ddim_steps} steps, device {args.device}, {torch.get_num_threads()} torch "
        f"threads, {os.cpu_count()} CPU cores\n"
    )
    print("| what | seconds | per second |\n|---|---|---|")
    for name, s in rows:
        print(f"| {name} | {s:.4f} | {1 / s:.1f} |")
    print(
        f"\ntraining throughput: {dc.batch_size / train_step:.1f} images/s; "
        f"{dc.steps} steps of the config ≈ {dc.steps * train_step / 60:.1f} min"
    )


if __name__ == "__main__":
    main()
