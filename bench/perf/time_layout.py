"""A/B of the model's convolution layout, or of the process allocator, on a real benchmark run:
`fedonco bench` once with ``FEDONCO_LAYOUT=channels_last`` (the default) and once with ``nchw``
(the layout before it), or (``--switch allocator``) once with ``FEDONCO_ALLOCATOR=keep`` (the
default) and once with ``system`` (malloc as it was); same profile and seed, one after the
other, and each method's training time from the runs.

    python bench/perf/time_layout.py --config configs/standard.toml --no-audit --out FILE.json
    python bench/perf/time_layout.py --switch allocator --no-audit --methods fedavg,dpsgd-pt --out F

Run it alone on the machine (a benchmark next to other work measures the other work). Every
process of a run (server, five sites, the benchmark's own pretraining) inherits the variable;
each run's versions.json records it. ``--no-audit`` runs a copy of the profile with
``[mia] enabled = false``: the training alone (the federations), which is what the layout
changes most directly; the audit's shadow federations are training too and change alike.
Writes, per value, the run's wall time and each method's ``timing_s`` (total, train) and
``final_model_sha256`` from its results.json, and the ratios second / first (nchw /
channels_last, system / keep). The allocator changes no result, so there the two runs' models
must be the same: ``same_models`` says whether they are.
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
# what a run switches: the variable, and its two values (the default first)
SWITCHES = {
    "layout": ("FEDONCO_LAYOUT", ("channels_last", "nchw")),
    "allocator": ("FEDONCO_ALLOCATOR", ("keep", "system")),
}


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


def run(
    config: Path, seed: int, value: str, out: Path, switch: str = "layout", methods: str = ""
) -> dict:
    var = SWITCHES[switch][0]
    t0 = time.perf_counter()
    log = out / f"{value}.log"
    with open(log, "w") as f:
        rc = subprocess.run(
            [sys.executable, "-m", "bench.cli", "bench", "--config", str(config)]
            + ["--seed", str(seed), "--out", str(out / value)]
            + (["--methods", methods] if methods else []),
            cwd=ROOT,
            stdout=f,
            stderr=subprocess.STDOUT,
            env={**os.environ, var: value},
        ).returncode
    wall = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"fedonco bench with {var}={value} failed (exit {rc}): {log}")
    return {"wall_s": wall, **summarise(out / value, value, switch)}


def summarise(out: Path, value: str, switch: str = "layout") -> dict:
    """The run under ``out``: its wall time and each method's timing_s (total, train) and final
    model hash; refused if its versions.json records another value of ``switch``."""
    (res,) = out.glob("*/results.json")
    r = json.loads(res.read_text())
    versions = json.loads((res.parent / "versions.json").read_text())
    if versions.get(switch) != value:
        raise SystemExit(f"{res.parent}/versions.json says {switch} {versions.get(switch)!r}")
    methods = {
        m: {
            **{k: e["timing_s"].get(k) for k in ("total", "train")},
            "final_model_sha256": e.get("final_model_sha256"),
        }
        for m, e in r["methods"].items()
    }
    return {"run_wall_s": r["wall_s"], "methods": methods}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "standard.toml")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--no-audit", action="store_true", help="training only ([mia] enabled = false)")
    p.add_argument("--switch", choices=sorted(SWITCHES), default="layout", help="what differs")
    p.add_argument("--methods", default="", help="only these methods (fedonco bench --methods)")
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix=f"fedonco-{args.switch}-"))
    config = without_audit(args.config, work) if args.no_audit else args.config
    first, second = SWITCHES[args.switch][1]
    rows = {}
    for value in (first, second):
        rows[value] = run(config, args.seed, value, work, args.switch, args.methods)
        print(f"{value}: {rows[value]['wall_s']:.0f} s", flush=True)
    a, b = rows[first], rows[second]
    ratios = {
        m: b["methods"][m]["train"] / a["methods"][m]["train"]
        for m in a["methods"]
        if a["methods"][m]["train"] and b["methods"][m]["train"]
    }
    keys = (f"train_ratio_{second}_over_{first}", f"wall_ratio_{second}_over_{first}")
    record = {
        "config": str(args.config),
        "seed": args.seed,
        "audit": not args.no_audit,
        "switch": args.switch,
        "runs": rows,
        keys[0]: ratios,
        keys[1]: b["wall_s"] / a["wall_s"],
        "same_models": all(
            a["methods"][m]["final_model_sha256"] == b["methods"][m]["final_model_sha256"]
            for m in a["methods"]
        ),
        "command": " ".join(["python bench/perf/time_layout.py", *(argv or sys.argv[1:])]),
        "work": str(work),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({k: record[k] for k in (*keys, "same_models")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
