"""Measure the margin of every statistical test check over seeds and CPU configurations.

A test that asserts a threshold on a trained model's AUC or Dice passes on one machine's draws
and may fail on another's (issue 26: two checks failed deterministically on a second CPU type).
This reruns those tests with ``FEDONCO_TEST_SEED`` = 0..N-1 under each configuration (native,
``ATEN_CPU_CAPABILITY=avx2``, two torch threads; the tests' default is one), reads the values the ``margin`` fixture records
(pytest --junitxml properties) and writes, per check, the threshold and the smallest and largest
value seen: the margin a test states comes from here, not from one lucky draw.

    python bench/perf/margins.py --out docs/runs/margins            # the unit checks (~2 min a run)
    python bench/perf/margins.py --leaky --configs avx2 --out docs/runs/margins-avx2
    python bench/perf/margins.py --leaky --seeds 5 --configs native  # + the leaky bench (slow)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UNIT = [
    "tests/unit/test_attacks.py::test_loss_attack_on_overfit_model_is_well_above_chance",
    "tests/unit/test_attacks.py::test_shadow_attack_and_lira_run_end_to_end",
    "tests/unit/test_attacks.py::test_run_ladder_all_rungs",
    "tests/unit/test_attacks.py::test_auditor_trains_online_shadows_on_half_the_candidates_each",
    "tests/unit/test_attacks.py::test_ladder_with_views_two_shadows_and_a_budget",
    "tests/unit/test_attack_rungs.py::test_map_attack_learns_a_spatial_pattern_and_is_deterministic",
    "tests/unit/test_attack_rungs.py::test_select_on_shadows_scores_every_queried_rung",
]
LEAKY = [
    "tests/integration/test_ladder_leaky.py::test_strongest_rung_finds_the_leak_and_the_ladder_is_ordered"
]
CONFIGS = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "2-threads": {"OMP_NUM_THREADS": "2"},  # tests/conftest.py defaults to one torch thread
}


def run_once(tests: list[str], env_extra: dict, seed: int) -> tuple[dict, int, float]:
    """One pytest run; returns {check: (value, op, threshold)}, pytest's exit code, seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        env = {**os.environ, **env_extra, "FEDONCO_TEST_SEED": str(seed)}
        t0 = time.perf_counter()
        rc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                f"--junitxml={xml}",
                *tests,
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ).returncode
        wall = time.perf_counter() - t0
        values = {}
        if xml.is_file():
            for prop in ET.parse(xml).iter("property"):
                name = prop.get("name", "")
                if name.startswith("margin:"):
                    value, op, threshold = prop.get("value", "").split()
                    values[name.removeprefix("margin:")] = (float(value), op, float(threshold))
    return values, rc, wall


def summarize(runs: list[dict]) -> dict:
    """Per check: threshold, direction, min/max over runs and the smallest margin (>0 = passed)."""
    checks: dict[str, dict] = {}
    for run in runs:
        for name, (value, op, threshold) in run["values"].items():
            c = checks.setdefault(name, {"op": op, "threshold": threshold, "values": []})
            c["values"].append(value)
    for c in checks.values():
        vals = c["values"]
        c["min"], c["max"], c["n"] = min(vals), max(vals), len(vals)
        worst = c["min"] if c["op"] == ">" else c["max"]
        c["margin"] = worst - c["threshold"] if c["op"] == ">" else c["threshold"] - worst
    return checks


def markdown(checks: dict, meta: dict) -> str:
    lines = [
        f"Margins of the statistical test checks ({meta['runs']} runs: seeds "
        f"{meta['seeds']}, configurations {', '.join(meta['configs'])}; "
        f"`python bench/perf/margins.py`, {meta['cpu']}).",
        "",
        "| check | needs | min | max | smallest margin | runs |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, c in sorted(checks.items()):
        lines.append(
            f"| {name} | {c['op']} {c['threshold']:g} | {c['min']:.3f} | {c['max']:.3f} "
            f"| {c['margin']:+.3f} | {c['n']} |"
        )
    return "\n".join(lines) + "\n"


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=5, help="seed offsets 0..N-1 (default 5)")
    p.add_argument(
        "--configs",
        default="native,avx2,2-threads",
        help=f"comma-separated, of {', '.join(CONFIGS)} (default: all)",
    )
    p.add_argument(
        "--leaky",
        action="store_true",
        help="also the leaky-profile bench test (a full federation + audit per run)",
    )
    p.add_argument("--out", type=Path, help="write margins.json and margins.md here")
    args = p.parse_args(argv)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = sorted(set(configs) - set(CONFIGS))
    if unknown or args.seeds < 1:
        p.error(f"unknown configuration {unknown}" if unknown else "--seeds must be >= 1")
    tests = UNIT + (LEAKY if args.leaky else [])
    runs = []
    for config in configs:
        for seed in range(args.seeds):
            values, rc, wall = run_once(tests, CONFIGS[config], seed)
            runs.append(
                {
                    "config": config,
                    "seed": seed,
                    "rc": rc,
                    "wall_s": round(wall, 1),
                    "values": values,
                }
            )
            low = ", ".join(f"{k}={v[0]:.3f}" for k, v in sorted(values.items()))
            print(f"[{config} seed {seed}] rc={rc} {wall:.0f}s {low}", flush=True)
    checks = summarize(runs)
    meta = {
        "runs": len(runs),
        "seeds": f"0-{args.seeds - 1}",
        "configs": configs,
        "cpu": _cpu(),
        "tests": tests,
    }
    print(markdown(checks, meta))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "margins.json").write_text(
            json.dumps({"meta": meta, "checks": checks, "runs": runs}, indent=1) + "\n"
        )
        (args.out / "margins.md").write_text(markdown(checks, meta))
    failed = [r for r in runs if r["rc"] != 0]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
