"""`fedonco data`: generate the dataset of a profile and print its per-site summary."""

from __future__ import annotations

import logging

from common.config import resolve_config, with_overrides
from common.data.diffusion.generate import build_dataset
from common.data.summary import summary_markdown

log = logging.getLogger(__name__)


def run_data(args) -> int:
    cfg = resolve_config(args.config, args.profile, args.seed)
    if getattr(args, "generator", None) or getattr(args, "model", None):
        generator = args.generator or ("diffusion" if args.model else cfg.data.generator)
        model = args.model or cfg.data.diffusion_model
        cfg = with_overrides(cfg, **{"data.generator": generator, "data.diffusion_model": model})

    def _list(v):
        return [x.strip() for x in v.split(",") if x.strip()] if v else None

    manifest = build_dataset(cfg, args.out, workers=args.workers, force=args.force,
                             gallery=not args.no_gallery, only_sites=_list(args.sites),
                             only_splits=_list(args.splits))  # fmt: skip
    print(f"\nDataset '{cfg.profile}' (seed {cfg.seed}, {cfg.data.image_size}px, severity "
          f"{cfg.data.severity}, stress {cfg.data.stress}, generator {cfg.data.generator}) "
          f"written to {args.out}\n")  # fmt: skip
    print(summary_markdown(manifest["summary"]))
    return 0
