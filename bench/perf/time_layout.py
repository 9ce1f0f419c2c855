"""A/B of the model's convolution layout on a real benchmark run: `fedonco bench` once with
``FEDONCO_LAYOUT=channels_last`` (the default) and once with ``nchw`` (the layout before it),
same profile and seed, one after the other, and each method's training time from the runs.

    python bench/perf/time_layout.py --config configs/standard.toml --no-audit --out FILE.json

Run it alone on the machine (a benchmark next to other work measures the other work). Every
process of a run (server, five sites, the benchmark's own pretraining) inherits the variable;
each run's versions.json records it. ``--no-audit`` runs a copy of the profile with
``[mia] enabled = false``: the training alone (the federations), which is what the layout
changes most directly; the audit's shadow federations are training too and change alike.
Writes, per layout, the run's wall time and each method's ``timing_s`` (total, train) from its
results.json, and the ratios nchw / channels_last.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYOUTS = ("channels_last", "nchw")


def without_audit(profile: Path, into: Path) -> Path:
    """A copy of ``profile`` whose [mia] table says ``enabled = false``."""
    text = profile.read_text()
    if re.search(r"^\[mia\]\s*$", text, flags=re.M):
        text = re.sub(r"^\[mia\]\s*$", "[mia]\nenabled = false", text, count=1, flags=re.M)
    else:
        text += "\n[mia]\nenabled = false\n"
    out = into / profile.name
    out.write_text(text)
    return out


def run(config: Path, seed: int, layout: str, out: Path) -> dict:
    t0 = time.perf_counter()
    log = out / f"{layout}.log"
    with open(log, "w") as f:
        rc = subprocess.run(
            [sys.executable, "-m", "bench.cli", "bench", "--config", str(config)]
            + ["--seed", str(seed), "--out", str(out / layout)],
            cwd=ROOT,
            stdout=f,
            stderr=subprocess.STDOUT,
            env={**os.environ, "FEDONCO_LAYOUT": layout},
        ).returncode
    wall = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"fedonco bench with FEDONCO_LAYOUT={layout} failed (exit {rc}): {log}")
    return {"wall_s": wall, **summarise(out / layout, layout)}


def summarise(out: Path, layout: str) -> dict:
    """The run under ``out``: its wall time and each method's timing_s (total, train); refused
    if its versions.json records another layout."""
    (res,) = out.glob("*/results.json")
    r = json.loads(res.read_text())
    versions = json.loads((res.parent / "versions.json").read_text())
    if versions.get("layout") != layout:
        raise SystemExit(f"{res.parent}/versions.json says layout {versions.get('layout')!r}")
    methods = {
        m: {k: e["timing_s"].get(k) for k in ("total", "train")} for m, e in r["methods"].items()
    }
    return {"run_wall_s": r["wall_s"], "methods": methods}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "standard.toml")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--no-audit", action="store_true", help="training only ([mia] enabled = false)")
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="fedonco-layout-"))
    config = without_audit(args.config, work) if args.no_audit else args.config
    rows = {}
    for layout in LAYOUTS:
        rows[layout] = run(config, args.seed, layout, work)
        print(f"{layout}: {rows[layout]['wall_s']:.0f} s", flush=True)
    a, b = rows["channels_last"], rows["nchw"]
    ratios = {
        m: b["methods"][m]["train"] / a["methods"][m]["train"]
        for m in a["methods"]
        if a["methods"][m]["train"] and b["methods"][m]["train"]
    }
    record = {
        "config": str(args.config),
        "seed": args.seed,
        "audit": not args.no_audit,
        "runs": rows,
        "train_ratio_nchw_over_channels_last": ratios,
        "wall_ratio_nchw_over_channels_last": b["wall_s"] / a["wall_s"],
        "command": " ".join(["python bench/perf/time_layout.py", *(argv or sys.argv[1:])]),
        "work": str(work),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    ratios = ("train_ratio_nchw_over_channels_last", "wall_ratio_nchw_over_channels_last")
    print(json.dumps({k: record[k] for k in ratios}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
