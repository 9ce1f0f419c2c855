"""`fedonco data`: generate the dataset of a profile and print its per-site summary;
`fedonco data import`: import real CT as a dataset (common/data/real); `fedonco data compare`: the
realism report of two datasets (common/data/real/compare.py)."""

from __future__ import annotations

import logging
from pathlib import Path

from bench.options import DataOptions
from common.config import resolve_config, with_overrides
from common.data.diffusion.generate import build_dataset
from common.data.summary import summary_markdown

log = logging.getLogger(__name__)


def run_data(args: DataOptions) -> int:
    if not args.out:
        raise ValueError("the following argument is required: --out")
    cfg = resolve_config(args.config, args.profile, args.seed)
    if args.generator or args.model:
        generator = args.generator or ("diffusion" if args.model else cfg.data.generator)
        model = args.model or cfg.data.diffusion_model
        cfg = with_overrides(cfg, **{"data.generator": generator, "data.diffusion_model": model})

    def _list(v):
        return [x.strip() for x in v.split(",") if x.strip()] if v else None

    manifest = build_dataset(
        cfg,
        args.out,
        workers=args.workers,
        force=args.force,
        gallery=not args.no_gallery,
        only_sites=_list(args.sites),
        only_splits=_list(args.splits),
    )
    print(
        f"\nDataset '{cfg.profile}' (seed {cfg.seed}, {cfg.data.image_size}px, severity "
        f"{cfg.data.severity}, stress {cfg.data.stress}, generator {cfg.data.generator}) "
        f"written to {args.out}\n"
    )
    print(summary_markdown(manifest["summary"]))
    return 0


def run_data_import(args) -> int:
    from common.data.real.importer import import_dataset

    cfg = resolve_config(args.config, args.profile, args.seed)
    manifest = import_dataset(
        args.src,
        args.out,
        cfg,
        layout=args.layout,
        tumor_label=args.tumor_label,
        organ_label=args.organ_label,
        sites_csv=args.sites,
        only_site=args.site,
        free_ratio=args.free_ratio,
        force=args.force,
        gallery=not args.no_gallery,
    )
    opts = manifest["import"]
    n = sum(len(v) for site in manifest["cases"].values() for v in site.values())
    print(
        f"\nImported {n} cases ({opts['layout']}, tumour label {opts['tumor_label']}, organ "
        f"label {opts['organ_label']}, sites {opts['site_rule']}) from {args.src} to {args.out} "
        f"for profile '{cfg.profile}' ({cfg.data.image_size}px, seed {cfg.seed})\n"
    )
    print(summary_markdown(manifest["summary"]))
    return 0


def run_data_compare(args) -> int:
    from common.data.real.compare import run_compare

    run_compare(args.real, args.synth, args.out, args.max_slices)
    print(f"\nRealism report written to {args.out}/compare.md, compare.json, compare.png\n")
    print((Path(args.out) / "compare.md").read_text())
    return 0
