"""Per-site summary table and gallery of a generated dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.data.loader import load_arrays


def site_summary(manifest: dict) -> list[dict]:
    """Counts per split, tumor prevalence, mean tumor area, measured liver noise sigma per site."""
    rows = []
    size = manifest["image_size"]
    for spec in manifest["sites"]:
        name = spec["name"]
        samples = {
            split: [
                s
                for e in manifest["shards"]
                if e["site"] == name and e["split"] == split
                for s in e["samples"]
            ]
            for split in manifest["splits"]
        }
        train = samples["train"]
        tumors = [s["tumor"] for s in train if s["has_tumor"]]
        sig = [
            s["noise"]["sigma_liver_hu"]
            for v in samples.values()
            for s in v
            if s["noise"]["sigma_liver_hu"]
        ]
        px_mm = spec["fov_mm"] / size
        mean_area = float(np.mean([t["area_px"] for t in tumors])) if tumors else 0.0
        classes = [t["size_class"] for t in tumors]
        rows.append(
            {
                "site": name,
                **{f"n_{k}": len(v) for k, v in samples.items()},
                "prevalence": len(tumors) / len(train) if train else 0.0,
                "tumor_area_px": mean_area,
                "tumor_area_mm2": mean_area * px_mm * px_mm,
                "large_frac": classes.count("large") / len(classes) if classes else 0.0,
                "small_or_tiny_frac": (classes.count("small") + classes.count("tiny"))
                / len(classes)
                if classes
                else 0.0,
                "noise_sigma_liver_hu": float(np.median(sig)) if sig else None,
                "kernel": spec.get("kernel", "n/a"),  # an imported dataset: no scanner model
                "dose": spec.get("dose"),
            }
        )
    return rows


def _dose(dose: float | None) -> str:
    return "n/a" if dose is None else f"{dose:.2f}"


def summary_markdown(rows: list[dict]) -> str:
    head = (
        "| site | train | holdout | test | attacker | prevalence | tumor area mm² (px) "
        "| large | small+tiny | noise σ liver HU | kernel | dose |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        sig = f"{r['noise_sigma_liver_hu']:.1f}" if r["noise_sigma_liver_hu"] is not None else "n/a"
        lines.append(
            f"| {r['site']} | {r['n_train']} | {r['n_holdout']} | {r['n_test']} | {r['n_attacker']} "
            f"| {r['prevalence']:.2f} | {r['tumor_area_mm2']:.0f} ({r['tumor_area_px']:.0f}) "
            f"| {r['large_frac']:.2f} | {r['small_or_tiny_frac']:.2f} | {sig} | {r['kernel']} "
            f"| {_dose(r['dose'])} |"
        )
    return head + "\n".join(lines) + "\n"


def render_gallery(root: Path, manifest: dict, path: Path, per_site: int = 4) -> None:
    """A grid: one row per site, tumor slices from the test split with the mask outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = manifest["site_names"]
    fig, axes = plt.subplots(
        len(names), per_site, figsize=(2.2 * per_site, 2.3 * len(names)), squeeze=False
    )
    for r, name in enumerate(names):
        images, masks, index, _ = load_arrays(root, "test", name, manifest)
        order = [i for i in range(len(index)) if masks[i].any()] + [
            i for i in range(len(index)) if not masks[i].any()
        ]
        spec = manifest["sites"][r]
        for c in range(per_site):
            ax = axes[r, c]
            ax.set_axis_off()
            if c >= len(order):
                continue
            i = order[c]
            ax.imshow(images[i], cmap="gray", vmin=-160, vmax=240, interpolation="nearest")
            if masks[i].any():
                ax.contour(masks[i], levels=[0.5], colors="r", linewidths=0.6)
            ax.set_title(f"{name} #{index[i]}", fontsize=7)
        axes[r, 0].text(
            -0.05,
            0.5,
            f"site {name}\n{spec.get('kernel', 'n/a')}\ndose {_dose(spec.get('dose'))}",
            transform=axes[r, 0].transAxes,
            ha="right",
            va="center",
            fontsize=7,
        )
    what = "imported" if manifest.get("generator") == "import" else "synthetic"
    fig.suptitle(f"FedOnco-Bench {what} CT (W400/L40; red: tumor mask)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
