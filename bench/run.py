"""`fedonco bench`: the benchmark end to end, into runs/<run_id>/.

Federated training, secure aggregation, DP-SGD and the membership-inference audit land in later
issues; today the benchmark generates the profile's dataset (with its per-site summary table and
gallery) and records the resolved config and library versions, and says so.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from common.config import resolve_config, with_overrides
from common.data.build import build_dataset
from common.data.summary import summary_markdown
from common.versions import collect_versions

log = logging.getLogger(__name__)


def run_bench(args) -> int:
    cfg = resolve_config(args.config, args.profile)
    if args.seed is not None:
        cfg = with_overrides(cfg, seed=args.seed)
    run_id = f"{cfg.profile}-seed{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(args.out) / run_id
    run_dir.mkdir(parents=True, exist_ok=False)
    (run_dir / "config.json").write_text(json.dumps(cfg.model_dump(mode="json"), indent=1) + "\n")
    (run_dir / "versions.json").write_text(json.dumps(collect_versions(), indent=1) + "\n")
    manifest = build_dataset(cfg, run_dir / "data")
    table = summary_markdown(manifest["summary"])
    print(f"\nRun {run_dir}\n\nDataset per site:\n\n{table}")
    print(
        "NOTE: federated training (FedAvg/FedProx/FedBN), secure aggregation, DP-SGD and the "
        "membership-inference audit are not implemented yet; this run generated the dataset, "
        f"its summary and {run_dir / 'data' / 'gallery.png'} only."
    )
    return 0
