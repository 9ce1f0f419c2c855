"""`fedonco diffusion report`: how realistic the diffusion slices are, and whether they show the
tumour exactly where the conditioning mask says.

One set of procedural slices (``test`` distribution, a seed of its own) gives the masks, sites and
backgrounds; the model then generates, for the same masks, (a) whole slices and (b) composites
(tumour + ring inpainted on the procedural slice), plus (c) a control: composites conditioned on an
EMPTY mask. (c) shows whether the tumour in (b) comes from the diffusion model or leaks in from
the procedural background (it should show plain liver: fidelity Dice near 0).

Realism (the same measurements on every set):
- HU statistics per tissue class by HU range (air, fat, soft tissue, bone: valid for any image),
  per labelled tissue where the layout is the procedural one (procedural, composite), and in
  the tumour (the mask) against a 2-pixel ring around it (the tumour contrast);
- noise: the high-pass residual (image minus a Gaussian-smoothed copy, sigma 1.5 px) in flat
  soft-tissue regions (smoothed gradient < 8 HU/px, eroded), its sigma per site, and its radial
  noise power spectrum (``common.data.scanner.radial_nps``). The high-pass filter is the same for
  every set, so the curves compare; the absolute level is below the true noise sigma.
Fidelity: a segmentation U-Net (the project's, ``common.model.build_model``, trained with
``common.training.local.train_local``) is trained on procedural slices only and evaluated against the
conditioning masks on each set (Dice per tumour image, global Dice, false-positive rate).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from common.config import SITE_PRESETS, Config
from common.data.anatomy import LABEL
from common.data.diffusion.generate import slice_seed
from common.data.diffusion.model import DiffusionModel, load_model
from common.data.diffusion.options import ReportOptions
from common.data.diffusion.sample import generate_hu
from common.data.diffusion.train import render_many
from common.data.scanner import radial_nps
from common.seeds import DIFFUSION_REPORT_OFFSET

log = logging.getLogger(__name__)

HU_CLASSES = {"air": (-1100, -500), "fat": (-500, -30), "soft": (-30, 250), "bone": (250, 3100)}
LABELLED = ("fat", "muscle", "liver", "spleen", "kidney", "cancellous_bone")
SETS = ("procedural", "whole", "composite", "control")


def _stats(values: np.ndarray) -> dict:
    v = values.astype(np.float64)
    return {
        "n": int(v.size),
        "mean": float(v.mean()) if v.size else None,
        "sd": float(v.std()) if v.size else None,
    }


def hu_class_stats(images: np.ndarray) -> dict:
    """Per HU-range class: fraction of pixels, mean and sd of HU."""
    out = {}
    for name, (lo, hi) in HU_CLASSES.items():
        sel = (images >= lo) & (images < hi)
        out[name] = {"fraction": float(sel.mean()), **_stats(images[sel])}
    return out


def tumour_contrast(images: np.ndarray, masks: np.ndarray) -> dict:
    """Mean HU in the tumours, in a 2-px ring of soft tissue (-30..250 HU) around them, and the
    difference (mean over tumour images); the HU gate keeps fat and gas next to the liver out."""
    inside, ring, diff = [], [], []
    for img, m in zip(images, masks, strict=True):
        m = m.astype(bool)
        if m.sum() < 3:
            continue
        r = ndimage.binary_dilation(m, iterations=2) & ~m & (img > -30) & (img < 250)
        if r.sum() < 3:
            continue
        a, b = float(img[m].mean()), float(img[r].mean())
        inside.append(a)
        ring.append(b)
        diff.append(a - b)
    return {
        "n": len(diff),
        "tumour_hu": float(np.mean(inside)) if inside else None,
        "ring_hu": float(np.mean(ring)) if ring else None,
        "contrast_hu": float(np.mean(diff)) if diff else None,
        "contrast_sd": float(np.std(diff)) if diff else None,
    }


def flat_residual(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(high-pass residual, flat soft-tissue region) of one slice in HU."""
    img = image.astype(np.float32)
    smooth = ndimage.gaussian_filter(img, 1.5)
    grad = np.hypot(*np.gradient(ndimage.gaussian_filter(img, 2.0)))
    flat = (smooth > -30) & (smooth < 250) & (grad < 8.0)
    flat = ndimage.binary_erosion(flat, iterations=1)
    return img - smooth, flat


def noise_stats(images: np.ndarray, sites: np.ndarray) -> dict:
    """Residual sigma in flat regions per site (median over slices) and the mean radial NPS."""
    per_site: dict[str, list[float]] = {s: [] for s in SITE_PRESETS}
    nps, fractions = [], []
    for img, s in zip(images, sites, strict=True):
        res, flat = flat_residual(img)
        if flat.sum() < 20:
            continue
        per_site[SITE_PRESETS[int(s)]].append(float(res[flat].std()))
        freq, p = radial_nps(np.where(flat, res - res[flat].mean(), 0.0))
        nps.append(p / flat.mean())
        fractions.append(float(flat.mean()))
    curve = np.mean(nps, axis=0) if nps else np.zeros(16)
    return {
        "sigma_by_site": {k: float(np.median(v)) if v else None for k, v in per_site.items()},
        "sigma_all": float(np.median(sum(per_site.values(), []))) if nps else None,
        "flat_fraction": float(np.mean(fractions)) if fractions else 0.0,
        "nps_freq": [float(f) for f in (freq if nps else np.zeros(16))],
        "nps": [float(v) for v in curve],
        "nps_mean_freq": float((curve * freq).sum() / curve.sum()) if nps else None,
    }


def labelled_stats(images: np.ndarray, tissue: np.ndarray, masks: np.ndarray) -> dict:
    """Per labelled tissue (procedural layout only), away from tumours."""
    away = ~np.stack([ndimage.binary_dilation(m, iterations=3) for m in masks])
    return {t: _stats(images[(tissue == LABEL[t]) & away]) for t in LABELLED}


def train_segmenter(cfg: Config, n: int, epochs: int, seed: int):
    """The project's U-Net trained on ``n`` procedural slices only (the fidelity judge)."""
    from torch.utils.data import DataLoader, TensorDataset

    from common.model import build_model
    from common.training.local import train_local
    from common.transforms import to_inputs

    slices = render_many(cfg, n, seed, split="train", desc="segmenter training set")
    x = to_inputs(np.stack([s.image for s in slices]), cfg.data.window)
    y = torch.from_numpy(np.stack([s.mask for s in slices]).astype(np.float32)).unsqueeze(1)
    model = build_model(cfg.model.base, cfg.model.norm, cfg.model.groups, seed=cfg.seed)
    loader = DataLoader(TensorDataset(x, y), batch_size=cfg.train.batch_size, shuffle=True)
    metrics = train_local(
        model, loader, epochs=epochs, lr=cfg.train.lr, seed=cfg.seed, optimizer=cfg.train.optimizer
    )
    log.info("segmenter: %d slices, %d epochs, loss %.4f", n, epochs, metrics["loss"])
    return model, metrics


def fidelity(model, images: np.ndarray, masks: np.ndarray, window) -> dict:
    from common.evaluation import evaluate_sums
    from common.metrics import metrics_from_sums
    from common.transforms import to_inputs

    return metrics_from_sums(evaluate_sums(model, to_inputs(images, window), masks))


def _plots(out: Path, sets: dict, masks: np.ndarray, noise: dict, window) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {
        "procedural": "k",
        "whole": "tab:blue",
        "composite": "tab:orange",
        "control": "tab:gray",
    }
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for name, imgs in sets.items():
        if name == "control":
            continue
        kw = {"histtype": "step", "density": True, "color": colors[name], "label": name}
        axes[0].hist(imgs.ravel(), bins=120, range=(-1050, 1500), log=True, **kw)
        axes[1].hist(imgs.ravel(), bins=100, range=(-160, 240), **kw)
        axes[2].hist(imgs[masks.astype(bool)], bins=60, range=(-60, 200), **kw)
    for ax, title in zip(
        axes, ("all pixels", "soft-tissue window", "inside tumour masks"), strict=True
    ):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("HU")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "hu_histograms.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for name, ns in noise.items():
        ax.plot(
            ns["nps_freq"],
            ns["nps"],
            color=colors[name],
            label=f"{name} (σ {_fmt(ns['sigma_all'])})",
        )
    ax.set_xlabel("spatial frequency / Nyquist")
    ax.set_ylabel("NPS of high-pass residual (HU²)")
    ax.set_title("noise power spectrum, flat soft tissue", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "nps.png", dpi=110)
    plt.close(fig)

    tumour = [i for i in range(len(masks)) if masks[i].sum() >= 8][:6]
    fig, axes = plt.subplots(len(tumour), 4, figsize=(8.4, 2.2 * len(tumour)), squeeze=False)
    for r, i in enumerate(tumour):
        for c, name in enumerate(SETS):
            ax = axes[r, c]
            ax.imshow(
                sets[name][i], cmap="gray", vmin=window[0], vmax=window[1], interpolation="nearest"
            )
            ax.contour(masks[i], levels=[0.5], colors="r", linewidths=0.5)
            ax.set_axis_off()
            if r == 0:
                ax.set_title("control (empty mask)" if name == "control" else name, fontsize=8)
    fig.suptitle("same masks: procedural vs diffusion (red: conditioning mask)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "gallery.png", dpi=110)
    plt.close(fig)


def _fmt(x, nd=1) -> str:
    return "n/a" if x is None else f"{x:.{nd}f}"


def markdown(r: dict) -> str:
    sets = [s for s in SETS if s in r["fidelity"]]
    lines = [
        f"# Diffusion generator report ({r['model']['image_size']}px, {r['n']} slices per set)\n",
        f"Model: {r['model']['dir']} ({r['model']['n_params'] / 1e6:.2f} M params, "
        f"{r['model']['steps']} steps, final loss {r['model']['final_loss']:.4f}); DDIM "
        f"{r['ddim_steps']} steps.\n",
        "## Mask fidelity: segmenter trained on procedural slices, scored against the "
        "conditioning masks\n",
        "| set | Dice / tumour image | global Dice | FP rate, empty slices | sampling s/slice |",
        "|---|---|---|---|---|",
    ]
    for s in sets:
        f = r["fidelity"][s]
        t = r["timing_s_per_slice"].get(s)
        lines.append(
            f"| {s} | {f['dice']:.3f} | {f['dice_global']:.3f} | "
            f"{_fmt(f['fp_rate_empty'], 3)} | {_fmt(t, 3)} |"
        )
    lines += [
        "",
        "## Tumour contrast (mean HU in mask minus a 2-px ring)\n",
        "| set | tumour HU | ring HU | contrast HU (sd) |",
        "|---|---|---|---|",
    ]
    for s in sets:
        c = r["tumour"][s]
        lines.append(
            f"| {s} | {_fmt(c['tumour_hu'])} | {_fmt(c['ring_hu'])} | "
            f"{_fmt(c['contrast_hu'])} ({_fmt(c['contrast_sd'])}) |"
        )
    lines += [
        "",
        "## HU by tissue class (HU ranges; fraction of pixels, mean ± sd)\n",
        "| set | " + " | ".join(HU_CLASSES) + " |",
        "|---|" + "---|" * len(HU_CLASSES),
    ]
    for s in sets:
        h = r["hu_classes"][s]
        cells = [
            f"{h[k]['fraction']:.2f}: {_fmt(h[k]['mean'])} ± {_fmt(h[k]['sd'])}" for k in HU_CLASSES
        ]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## HU by labelled tissue (procedural layout; composite = procedural outside the "
        "tumour ring)\n",
        "| set | " + " | ".join(LABELLED) + " |",
        "|---|" + "---|" * len(LABELLED),
    ]
    for s in ("procedural", "composite"):
        h = r["labelled"][s]
        lines.append(
            f"| {s} | "
            + " | ".join(f"{_fmt(h[k]['mean'])} ± {_fmt(h[k]['sd'])}" for k in LABELLED)
            + " |"
        )
    lines += [
        "",
        "## Noise in flat soft tissue (high-pass residual σ, HU; median per site)\n",
        "| set | all | " + " | ".join(SITE_PRESETS) + " | NPS mean freq (/Nyquist) |",
        "|---|---|" + "---|" * len(SITE_PRESETS) + "---|",
    ]
    for s in sets:
        ns = r["noise"][s]
        per = " | ".join(_fmt(ns["sigma_by_site"][k]) for k in SITE_PRESETS)
        lines.append(f"| {s} | {_fmt(ns['sigma_all'])} | {per} | {_fmt(ns['nps_mean_freq'], 3)} |")
    lines += [
        "",
        f"True noise σ in flat liver of the procedural slices (generator record), "
        f"median: {_fmt(r['procedural_sigma_liver_hu'])} HU.",
        "",
        "Files: gallery.png, hu_histograms.png, nps.png, report.json.",
        "",
    ]
    return "\n".join(lines)


def diffusion_report(
    cfg: Config,
    model_dir: str | Path,
    out: str | Path,
    *,
    n: int = 200,
    seg_slices: int = 1000,
    seg_epochs: int = 8,
    model: DiffusionModel | None = None,
) -> dict:
    """Write report.json, report.md, gallery.png, hu_histograms.png and nps.png into ``out``."""
    if n < 5:
        raise ValueError(f"need at least 5 slices per set, got {n}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = model or load_model(model_dir)
    if model.size != cfg.data.image_size:
        raise ValueError(
            f"model makes {model.size}px slices, config data.image_size is {cfg.data.image_size}"
        )
    dc = cfg.diffusion
    seed = cfg.seed + DIFFUSION_REPORT_OFFSET  # neither the benchmark's nor the training set's
    slices = render_many(cfg, n, seed, split="test", desc="report slices")
    masks = np.stack([s.mask for s in slices])
    bg = np.stack([s.image for s in slices])
    tissue = np.stack([s.tissue for s in slices])
    sites = np.array([SITE_PRESETS.index(s.params["site"]) for s in slices])
    seeds = [slice_seed(seed, int(st), "test", k) for k, st in enumerate(sites)]
    sets = {"procedural": bg}
    timing = {}
    has_tumour = masks.reshape(n, -1).any(1)
    for name, mode, empty in (
        ("whole", "whole", False),
        ("composite", "composite", False),
        ("control", "composite", True),
    ):
        todo = np.arange(n) if mode == "whole" else np.flatnonzero(has_tumour)
        result, t0 = bg.copy(), time.perf_counter()
        for k in range(0, len(todo), dc.sample_batch):
            ids = todo[k : k + dc.sample_batch]
            sd = [seeds[i] for i in ids]
            cond = np.zeros_like(masks[ids]) if empty else masks[ids]
            if mode == "whole":
                result[ids] = generate_hu(
                    model, cond, sites[ids], sd, mode="whole", steps=dc.ddim_steps
                )
            else:  # generated around the real mask, conditioned on `cond` (empty: the control)
                result[ids] = _composite(model, masks[ids], cond, sites[ids], sd, bg[ids], dc)
        sets[name] = result
        timing[name] = (time.perf_counter() - t0) / max(1, len(todo))
        log.info("%s: %d slices sampled, %.3f s/slice", name, len(todo), timing[name])

    seg, seg_metrics = train_segmenter(cfg, seg_slices, seg_epochs, seed + 1)
    window = cfg.data.window
    noise = {k: noise_stats(v, sites) for k, v in sets.items()}
    sig = [
        s.params["noise"]["sigma_liver_hu"] for s in slices if s.params["noise"]["sigma_liver_hu"]
    ]
    report = {
        "model": {
            "dir": str(model_dir),
            **{
                k: model.meta[k]
                for k in ("image_size", "n_params", "steps", "final_loss", "step_time_s")
            },
        },
        "n": n,
        "n_tumour_slices": int(masks.reshape(n, -1).any(1).sum()),
        "ddim_steps": dc.ddim_steps,
        "mode_settings": {"dilate_px": dc.dilate_px, "blur_px": dc.blur_px},
        "segmenter": {"slices": seg_slices, "epochs": seg_epochs, **seg_metrics},
        "fidelity": {k: fidelity(seg, v, masks, window) for k, v in sets.items()},
        "tumour": {k: tumour_contrast(v, masks) for k, v in sets.items()},
        "hu_classes": {k: hu_class_stats(v) for k, v in sets.items()},
        "labelled": {
            k: labelled_stats(sets[k], tissue, masks) for k in ("procedural", "composite")
        },
        "noise": noise,
        "procedural_sigma_liver_hu": float(np.median(sig)) if sig else None,
        "timing_s_per_slice": timing,
    }
    _plots(out, sets, masks, {k: noise[k] for k in ("procedural", "whole", "composite")}, window)
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "report.md").write_text(markdown(report))
    return report


def _composite(model, region_masks, cond_masks, sites, seeds, bg, dc) -> np.ndarray:
    """Composite around ``region_masks`` while conditioning on ``cond_masks`` (control = empty)."""
    from common.data.diffusion.model import hu_to_unit, unit_to_hu
    from common.data.diffusion.sample import composite_weight, sample_unit

    if np.array_equal(region_masks, cond_masks):
        return generate_hu(
            model,
            cond_masks,
            sites,
            seeds,
            mode="composite",
            steps=dc.ddim_steps,
            background_hu=bg,
            dilate_px=dc.dilate_px,
            blur_px=dc.blur_px,
        )
    pairs = [composite_weight(m, dc.dilate_px, dc.blur_px) for m in region_masks]
    region, w = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    x = sample_unit(
        model,
        cond_masks,
        sites,
        seeds,
        steps=dc.ddim_steps,
        known=hu_to_unit(bg, model.knots),
        region=region,
    )
    hu = w * unit_to_hu(x, model.knots) + (1 - w) * bg.astype(np.float32)
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)


def run_diffusion_report(args: ReportOptions) -> int:
    """`fedonco diffusion report`."""
    from common.config import resolve_config

    cfg = resolve_config(args.config, args.profile, args.seed)
    r = diffusion_report(
        cfg, args.model, args.out, n=args.n, seg_slices=args.seg_slices, seg_epochs=args.seg_epochs
    )
    print(markdown(r))
    return 0
