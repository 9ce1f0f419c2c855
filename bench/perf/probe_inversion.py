"""Probe gradient inversion (``attacks/inversion.py``) on a profile's model, in its most favourable
setting: one site's update after ONE plain-SGD step on ONE training slice at the initial global
model (FedSGD with batch 1, no secure aggregation, no DP), so the server's view is exactly
``lr`` times that slice's loss gradient.

For each of ``--slices`` tumour slices of site A's training split it inverts the gradient
(random restarts, the module's fixed budget or ``--steps``) and reports the match: gradient
cosine, PSNR and SSIM of the reconstruction against the true slice (windowed, [0, 1]), PSNR
after the best affine intensity fit (the normalisation layers make the gradient nearly blind to
contrast), the Pearson correlation, the reconstructed mask's Dice, and two baselines that need
no view at all: the PSNR of the mean attacker-pool slice and of the pool slice nearest to the
truth (an oracle pick from public data). A reconstruction that does not beat the nearest public
slice has learned nothing a public generator does not give. ``--known-mask`` hands the attacker
the true mask (an upper bound: only the image is optimised).

    python bench/perf/probe_inversion.py --config configs/standard.toml --slices 3
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from attacks.inversion import InversionSettings, invert, match_reconstructions, psnr  # noqa: E402
from common.config import load_config, with_overrides  # noqa: E402
from common.data.loader import load_arrays  # noqa: E402
from common.metrics import seg_loss  # noqa: E402
from common.model import model_for  # noqa: E402
from common.transforms import to_inputs, window_hu  # noqa: E402


def _affine_psnr(rec: np.ndarray, true: np.ndarray) -> float:
    a = np.stack([rec.ravel(), np.ones(rec.size)], 1)
    coef, *_ = np.linalg.lstsq(a, true.ravel(), rcond=None)
    return psnr(np.clip(a @ coef, 0, 1).reshape(true.shape), true)


def probe(cfg, method: str, data: Path, n_slices: int, settings: InversionSettings, known: bool):
    images, masks, *_ = load_arrays(data, "train", cfg.sites[0].name)
    pool, _pool_masks, *_ = load_arrays(data, "attacker")
    window = tuple(cfg.data.window)
    pool_w = window_hu(pool, window)
    tumour = np.flatnonzero(masks.reshape(len(masks), -1).any(axis=1))[:n_slices]
    rows = []
    for i in tumour:
        model = model_for(cfg, method)  # the initial global model of round 1
        model.train()
        x = to_inputs(images[i : i + 1], window)
        y = torch.from_numpy(masks[i : i + 1].astype(np.float32)).unsqueeze(1)
        grads = torch.autograd.grad(seg_loss(model(x), y), list(model.parameters()))
        # the server's view: -(w_after - w_before) / lr = the slice's gradient (one SGD step)
        view = {n: g.numpy() for (n, _), g in zip(model.named_parameters(), grads, strict=True)}
        t0 = time.perf_counter()
        inv = invert(
            model, view, x.shape[-1], settings, known_masks=masks[i : i + 1] if known else None
        )
        true = x[0, 0].numpy()
        match = match_reconstructions(inv.images, inv.masks, true[None], masks[i : i + 1])
        rec = inv.images[0]
        rows.append(
            {
                "slice": int(i),
                "cosine": inv.cosine,
                "psnr": match["psnr_mean"],
                "ssim": match["ssim_mean"],
                "psnr_affine": _affine_psnr(rec, true),
                "corr": float(np.corrcoef(rec.ravel(), true.ravel())[0, 1]),
                "mask_dice": match["mask_dice_mean"],
                "psnr_pool_mean": psnr(pool_w.mean(axis=0), true),
                "psnr_pool_nearest": max(psnr(p, true) for p in pool_w),
                "seconds": time.perf_counter() - t0,
            }
        )
        print(
            json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in rows[-1].items()})
        )
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/standard.toml")
    p.add_argument("--method", default="fedavg", help="whose model (its norm layers) to invert")
    p.add_argument("--slices", type=int, default=3)
    p.add_argument("--steps", type=int, default=InversionSettings.steps)
    p.add_argument("--restarts", type=int, default=InversionSettings.restarts)
    p.add_argument("--known-mask", action="store_true", help="give the attacker the true mask")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", help="write the rows as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    cfg = with_overrides(cfg, **{"data.attacker_size": 200})
    settings = InversionSettings(steps=args.steps, restarts=args.restarts)
    with tempfile.TemporaryDirectory() as tmp:
        from common.data.build import build_dataset

        out = Path(tmp) / "data"
        build_dataset(cfg, out, gallery=False, only_splits=["train", "attacker"])
        rows = probe(cfg, args.method, out, args.slices, settings, args.known_mask)
    summary = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "slice"}
    print("mean", json.dumps({k: round(v, 3) for k, v in summary.items()}))
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "mean": summary}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
