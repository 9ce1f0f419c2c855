"""The tables of docs/results.md, written from committed results files (never typed).

    python -m bench.results_doc docs/data/standard-issue25

reads every ``seed*.json`` there (a seed's ``results.json``, as ``fedonco bench`` writes it) and
prints markdown: mean ± sd over the seeds per method, then per seed and method the quoted rung
(chosen on shadow data) with its AUC and exact 95% intervals on TPR at 10% and 1% FPR, the DP
ceiling test, then each seed's claims and goals lines. ``tests/unit/test_results_doc.py`` checks
that docs/results.md holds exactly this output.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def load_seeds(folder: Path) -> dict[int, dict]:
    out = {}
    for p in sorted(Path(folder).glob("seed*.json")):
        r = json.loads(p.read_text())
        out[int(r["seed"])] = r
    if not out:
        raise FileNotFoundError(f"{folder}: no seed*.json results files")
    return out


def _mean_sd(xs: list, nd: int = 3) -> str:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not xs:
        return "n/a"
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return f"{m:.{nd}f} ± {sd:.{nd}f}"


def _tpr(mia: dict, key: str) -> tuple[float | None, list | None, str]:
    p = (mia.get("tpr") or {}).get(key) or {}
    if not p:
        return mia.get(key), None, ""
    return p["tpr"], p.get("tpr_ci95"), f"{p['fp']}/{p['n_nonmembers']}"


def _tpr_cell(mia: dict, key: str) -> str:
    tpr, ci, fp = _tpr(mia, key)
    if tpr is None:
        return "n/a"
    return (
        f"{tpr:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "") + (f" ({fp})" if fp else "")
    )


def _ceiling(mia: dict) -> str:
    tests = (mia.get("dp_ceiling") or {}).get("tests") or {}
    parts = []
    for k, t in tests.items():
        name = k.replace("tpr_at_", "@").replace("pct_fpr", "%")
        if t and t.get("estimable"):
            verdict = "VIOLATED" if t["violates"] else "holds"
            parts.append(f"{name}: {verdict} (bound {t['bound']:.3f}, p {t['p_value']:.2g})")
    return "; ".join(parts) or "–"


def _eps(r: dict) -> str:
    if r.get("epsilon") is None:
        return "∞ (no DP)"
    dp = r.get("dp") or {}
    other = (dp.get("epsilon_by_adjacency") or {}).get("add-remove")
    return f"{r['epsilon']:.2f} ({dp.get('adjacency', '?')}" + (
        f"; add/remove {other:.2f})" if other is not None else ")"
    )


def summary_table(seeds: dict[int, dict]) -> str:
    methods = list(next(iter(seeds.values()))["methods"])
    lines = [f"Mean ± sd over seeds {', '.join(map(str, sorted(seeds)))}:", "",
             "| method | Dice | ε (worst site) | quoted attack AUC | TPR@10%FPR | TPR@1%FPR |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for m in methods:
        rs = [s["methods"][m] for s in seeds.values() if m in s["methods"]]
        mias = [r.get("mia") or {} for r in rs]
        eps = [r.get("epsilon") for r in rs]
        eps_s = "∞ (no DP)" if all(e is None for e in eps) else _mean_sd(eps, 2)
        lines.append(f"| {m} | {_mean_sd([r.get('dice') for r in rs])} | {eps_s} | "
                     f"{_mean_sd([x.get('auc') for x in mias])} | "
                     f"{_mean_sd([_tpr(x, 'tpr_at_10pct_fpr')[0] for x in mias])} | "
                     f"{_mean_sd([_tpr(x, 'tpr_at_1pct_fpr')[0] for x in mias])} |")  # fmt: skip
    return "\n".join(lines)


def per_seed_table(seeds: dict[int, dict]) -> str:
    lines = ["| seed | method | Dice | ε | randomness | quoted rung | AUC [95% CI] | TPR@10%FPR [CP 95%] (FP/N0) "
             "| TPR@1%FPR [CP 95%] (FP/N0) | DP ceiling test |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for seed, res in sorted(seeds.items()):
        for m, r in res["methods"].items():
            mia = r.get("mia") or {}
            ci = mia.get("auc_ci95") or [None, None]
            auc = (
                "n/a" if mia.get("auc") is None else f"{mia['auc']:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]"
            )
            rung = mia.get("attack") or "n/a"
            if mia.get("rung_warning"):
                rung += " ⚠"
            rand = (r.get("dp") or {}).get("randomness") or "–"
            dice = "n/a" if r.get("dice") is None else f"{r['dice']:.3f}"
            lines.append(f"| {seed} | {m} | {dice} | {_eps(r)} | {rand} | {rung} | {auc} | "
                         f"{_tpr_cell(mia, 'tpr_at_10pct_fpr')} | {_tpr_cell(mia, 'tpr_at_1pct_fpr')} | "
                         f"{_ceiling(mia)} |")  # fmt: skip
    return "\n".join(lines)


def verdicts(seeds: dict[int, dict]) -> str:
    out = []
    for seed, res in sorted(seeds.items()):
        wall = res.get("wall_s")
        out.append(f"Seed {seed} (all methods and audits {wall / 60:.1f} min):" if wall else
                   f"Seed {seed}:")  # fmt: skip
        out += [f"- {line}" for line in res.get("claims", [])]
        out += [f"- goal: {line}" for line in res.get("goals", [])]
        out.append("")
    return "\n".join(out).rstrip()


def results_doc(folder: Path) -> str:
    seeds = load_seeds(folder)
    return "\n\n".join([summary_table(seeds), per_seed_table(seeds), verdicts(seeds)]) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("folder", type=Path, help="a folder of seed<N>.json results files")
    args = ap.parse_args(argv)
    print(results_doc(args.folder), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
