"""Re-audit a finished run's releases with other audit settings, without training again.

The shadows come from the run's cache (``runs/<run>/cache``) when the recipe matches, so trying
another view set, RMIA γ or the auditor costs only the queries and the rungs. Writes the audit
under ``--work/<tag>/<method>/audit`` (the run itself is not touched) and prints one JSON line per
method: AUC [CI] and TPR@1%FPR per rung, the strongest rung and how it was chosen, queries, wall.

    python bench/perf/reaudit.py runs/<run> --methods fedavg --tag views4 \\
        --set mia.views='["id","hflip","right","left"]'
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.audit import audit  # noqa: E402
from common.config import load_config, with_overrides  # noqa: E402
from common.training.pretrain import CACHE_ENV  # noqa: E402


def _cell(v: dict) -> list:
    return [
        round(v["auc"], 3),
        [round(x, 2) for x in v["auc_ci95"]],
        round(v["tpr_at_1pct_fpr"], 3),
    ]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a finished run directory (with config.json, data/)")
    p.add_argument("--methods", required=True, help="comma-separated methods of that run")
    p.add_argument("--tag", required=True, help="name of this setting (output subdirectory)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="a config override, e.g. mia.rmia_gamma=2.0 (repeatable)",
    )
    p.add_argument("--work", type=Path, default=Path("runs/reaudit"), help="output root")
    args = p.parse_args(argv)
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    os.environ.setdefault(CACHE_ENV, str(args.run / "cache"))
    cfg = with_overrides(load_config(args.run / "config.json"), **overrides)
    work = args.work / args.tag
    work.mkdir(parents=True, exist_ok=True)
    cpath = work / "config.json"
    cpath.write_text(json.dumps(cfg.model_dump(mode="json")))
    if not (work / "attacker-pool").exists():
        shutil.copytree(args.run / "attacker-pool", work / "attacker-pool")
    for m in args.methods.split(","):
        mdir = work / m
        shutil.rmtree(mdir, ignore_errors=True)
        shutil.copytree(args.run / m, mdir, ignore=shutil.ignore_patterns("audit"))
        result = json.loads((args.run / m / "result.json").read_text())
        start = time.perf_counter()
        mia = audit(cfg, cpath, mdir, args.run / "data", result)
        print(
            json.dumps(
                {
                    "tag": args.tag,
                    "method": m,
                    "wall_s": round(time.perf_counter() - start, 1),
                    "members": mia["n_members"],
                    "nonmembers": mia["n_nonmembers"],
                    "strongest": mia["attack"],
                    "selected_on": mia["selected_on"],
                    "queries": mia["attack_info"]["queries"],
                    "rungs": {k: _cell(v) for k, v in mia["attacks"].items()},
                    "auditor": {
                        k: _cell(v)
                        for k, v in (mia.get("auditor") or {}).get("attacks", {}).items()
                    },
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
