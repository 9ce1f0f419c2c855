"""A benchmark run's results files as committed or written (one seed's ``results.json``, or
``seed<N>/results.json`` and their summary): what the docs, the studies and the threats table read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Run:
    path: Path
    files: dict[int, Path]  # seed -> its results.json
    results: dict[int, dict]
    sweep: bool = False


def read_json(p: Path) -> dict:
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{p}: not readable JSON ({err})") from None


def load_run(folder: Path) -> Run:
    """A run directory: a one-seed ``results.json``, or ``seed<N>/results.json`` files (a
    several-seed run; its summary ``results.json``, when present, must agree with them)."""
    folder = Path(folder)
    top = folder / "results.json"
    files: dict[int, Path] = {}
    summary = read_json(top) if top.is_file() else None
    if summary is not None and "seed" in summary:
        files[int(summary["seed"])] = top
    else:
        for p in sorted(folder.glob("seed*/results.json")):
            r = read_json(p)
            if "seed" not in r or "methods" not in r:
                raise ValueError(f"{p}: not one seed's results.json (no seed or methods)")
            files[int(r["seed"])] = p
    if not files:
        raise ValueError(f"{folder}: no results.json of a run (nor seed<N>/results.json)")
    results = {s: read_json(p) for s, p in files.items()}
    for s, p in files.items():
        if int(results[s]["seed"]) != s:
            raise ValueError(f"{p}: seed {results[s]['seed']}, expected {s}")
    sweep = any(e.get("sweep") for r in results.values() for e in r["methods"].values())
    if summary is not None and "seeds" in summary:
        _check_summary(top, summary, results)
    return Run(folder, files, results, sweep)


def _check_summary(path: Path, summary: dict, results: dict[int, dict]) -> None:
    from bench.report import seed_summary

    if sorted(summary["seeds"]) != sorted(results):
        raise ValueError(f"{path}: seeds {summary['seeds']}, but seed<N>/ holds {sorted(results)}")
    again = json.loads(json.dumps(seed_summary(results), default=float))
    if again != summary["methods"]:
        raise ValueError(
            f"{path}: its mean ± sd do not match its seed<N>/results.json files "
            "(edited by hand?); regenerate the run's report"
        )
