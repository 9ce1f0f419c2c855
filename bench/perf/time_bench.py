"""Time `make bench` alone and write where its wall time goes.

    python bench/perf/time_bench.py --out docs/runs/make-bench.json        # runs it, then reads it
    python bench/perf/time_bench.py --run runs/<run_id> --out FILE.json    # reads a finished run

Runs what `make bench` runs (``fedonco bench --config configs/standard.toml``, this checkout's
code, into a temporary directory unless ``--keep``) with nothing else on the machine — the point
is the time a user waits — and splits the run's wall time with what the run recorded itself:

- training: each method's federation (``timing_s.total``: rounds, evaluation, the processes'
  start), from results.json;
- shadows: the audit's shadow federations (``shared_timing_s.shadow_train_s`` of the attacker,
  plus the auditor's online shadows when the profile has them);
- queries: the black-box queries of the candidates and RMIA's population, and the shadows'
  answers on the same slices, per target;
- each rung: its seconds choosing on shadow data and scoring the candidates (``rungs``), summed
  over targets (FedBN: five); a run older than these records (94f503d) has them all under
  "rungs, shared work", and its shadows' time read from the attacker's log;
- other audit: the attacker's start, loading, the release service, the referee's statistics;
- rest: the dataset, public pretraining, reports.

The README's line on `make bench` is generated from the JSON (``fedonco report docs``); the goal
line compares the total with ``--goal-min`` (20 minutes on 2 cores, issue 26).
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
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from attacks.rungs import LADDER as RUNGS  # noqa: E402  (the attacker's rungs, in order)
from bench.perf.margins import _cpu  # noqa: E402

DEFAULT_CONFIG = "configs/standard.toml"  # what `make bench` runs
SHADOW_READY = re.compile(r"shadow federation \d+/\d+ \(.*\) ready in ([\d.]+)s")


def shadows_from_log(log: Path) -> dict:
    """A run older than ``shared_timing_s`` (94f503d): the shadows' wall time from the attacker's
    log — the longest "ready in" where they trained side by side ("at once"), else their sum —
    or nothing."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return {}
    times = [float(m.group(1)) for m in SHADOW_READY.finditer(text)]
    if not times:
        return {}
    return {"shadow_train_s": max(times) if " at once, " in text else sum(times)}


def method_breakdown(entry: dict, method_dir: Path | None = None) -> dict:
    """One method's seconds: training, and its audit split into shadows, queries and rungs
    (``method_dir``: where its logs are, for a run that recorded no shadow time)."""
    mia = entry.get("mia") or {}
    info = mia.get("attack_info") or {}
    shared = info.get("shared_timing_s") or {}
    if not shared and method_dir is not None:
        shared = shadows_from_log(method_dir / "logs" / "attacker.log")
    targets = (info.get("per_target") or {}).values()
    ladders = [(t.get("ladder") or {}).get("timing_s") or {} for t in targets]
    rungs = {r: sum((lad.get("rungs") or {}).get(r, 0.0) for lad in ladders) for r in RUNGS}
    audit = float(mia.get("attacker_wall_s") or 0.0)
    shadows = float(shared.get("shadow_train_s", 0.0)) + float(
        shared.get("auditor_shadow_train_s", 0.0)
    )
    queries = sum(lad.get("queries", 0.0) for lad in ladders)
    attacks = sum(lad.get("attacks", 0.0) for lad in ladders)
    return {
        "training_s": float((entry.get("timing_s") or {}).get("total") or 0.0),
        "audit_s": audit,
        "shadows_s": shadows,
        "queries_s": queries,
        "rungs_s": rungs,
        "rungs_other_s": max(0.0, attacks - sum(rungs.values())),  # pool predictions, features
        "other_audit_s": max(0.0, audit - shadows - queries - attacks),
        "targets": len(ladders),
    }


def breakdown(results: dict, run: Path | None = None) -> dict:
    """The whole run's split (seconds) from its results.json (``run``: its directory)."""
    methods = {
        m: method_breakdown(e, run / m if run else None) for m, e in results["methods"].items()
    }
    total = float(results.get("wall_s") or 0.0)

    def add(key):
        return sum(b[key] for b in methods.values())

    phases = {
        "training": add("training_s"),
        "shadows": add("shadows_s"),
        "queries": add("queries_s"),
        **{f"rung {r}": sum(b["rungs_s"][r] for b in methods.values()) for r in RUNGS},
        "rungs, shared work": add("rungs_other_s"),
        "other audit": add("other_audit_s"),
    }
    phases["rest (data, pretraining, reports)"] = max(0.0, total - sum(phases.values()))
    return {"wall_s": total, "phases_s": phases, "methods": methods}


def markdown(record: dict) -> str:
    b = record["breakdown"]
    total = b["wall_s"] or 1.0
    lines = [
        f"`make bench` ({record['config']}, seed {record['seed']}): "
        f"{b['wall_s'] / 60:.1f} min on {record['cores']} cores ({record['cpu']}), goal "
        f"<= {record['goal_min']:.0f} min: {'PASS' if record['pass'] else 'FAIL'}"
        + (
            f" (not all methods ran: {', '.join(record['methods_missing'])} missing)"
            if record.get("methods_missing")
            else ""
        ),
        "",
        "| phase | min | share |",
        "|---|---|---|",
    ]
    for k, v in b["phases_s"].items():
        lines.append(f"| {k} | {v / 60:.1f} | {100 * v / total:.0f}% |")
    lines += [
        "",
        "| method | training min | audit min | shadows min | rungs min | targets |",
        "|---|---|---|---|---|---|",
    ]
    for m, x in b["methods"].items():
        lines.append(
            f"| {m} | {x['training_s'] / 60:.1f} | {x['audit_s'] / 60:.1f} | "
            f"{x['shadows_s'] / 60:.1f} | {sum(x['rungs_s'].values()) / 60:.1f} | "
            f"{x['targets']} |"
        )
    return "\n".join(lines)


def newest_run(out: Path) -> Path:
    runs = sorted(
        (p for p in out.iterdir() if (p / "results.json").is_file()),
        key=lambda p: p.stat().st_mtime,
    )
    if not runs:
        raise SystemExit(f"{out}: the bench wrote no results.json")
    return runs[-1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--run", type=Path, help="read this finished run instead of running the bench")
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    p.add_argument("--goal-min", type=float, default=20.0)
    p.add_argument("--keep", action="store_true", help="keep the run directory (prints its path)")
    args = p.parse_args(argv)
    sha = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    if args.run is None:
        out = Path(tempfile.mkdtemp(prefix="fedonco-bench-"))
        cmd = [
            sys.executable,
            "-m",
            "bench.cli",
            "bench",
            "--config",
            args.config,
            "--out",
            str(out),
        ]
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, cwd=ROOT).returncode
        wall = time.perf_counter() - t0
        if rc != 0:
            print(f"the bench exited {rc}", file=sys.stderr)
            return rc
        config = "" if args.config == DEFAULT_CONFIG else f" --config {args.config}"
        run = newest_run(out)
        command = f"python bench/perf/time_bench.py{config} --out {args.out}"
        if args.keep:
            print(f"run kept in {run}")
    else:
        run, wall = args.run, None
        command = f"python bench/perf/time_bench.py --run runs/<run_id> --out {args.out}"
    results = json.loads((run / "results.json").read_text())
    b = breakdown(results, run)
    if wall is not None:  # the process's own wall time, start to exit
        b["process_wall_s"] = wall
    from common.config import load_config

    planned = load_config(ROOT / args.config).fl.methods  # what `make bench` runs
    missing = [m for m in planned if m not in results["methods"]]
    versions = run / "versions.json"
    code = json.loads(versions.read_text()).get("git_sha") if versions.is_file() else None
    record = {
        "config": args.config,
        "seed": results.get("seed"),
        "commit": sha,
        "run_code": code,
        "run_id": run.name,
        "goal_min": args.goal_min,
        "methods_missing": missing,
        "pass": b["wall_s"] <= 60 * args.goal_min and not missing,
        "breakdown": b,
        "cpu": _cpu(),
        "cores": os.cpu_count(),
        "command": command,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
