"""What each defence buys: one table over the attacks of docs/threat-model.md.

    fedonco threats --config configs/standard.toml --seeds 3 --out runs/threats   (make threats)
    fedonco threats --report runs/threats/seeds42-44                      (the table again)

``fedonco threats`` runs the benchmark (``bench.run.run_bench``: the real server, five site
processes, the release service and both attackers as their own processes) for the three releases
the rows need — ``groupnorm-pt`` (no DP), ``dpsgd-pt`` (per-site DP-SGD at the profile's ε) and
``ddp-sgd-pt`` (distributed DP at the same ε) — with the white-box attacker on (``mia.whitebox``),
and writes ``threats.md`` / ``threats.json`` beside the run's results from its results.json files
and the lying-server harness (``attacks.aggregator``, in process, deterministic).

Rows: no defence, secure aggregation, per-site DP, distributed DP, secure aggregation + per-site
DP. Columns:

- black-box and white-box AUC of the strongest rung (chosen on shadow data), mean ± sd over the
  seeds, with the per-seed 95% CIs; measured on the release of the row's method. Secure
  aggregation does not change what is released (the sum it reveals is the sum, up to its
  quantisation, ``common/secagg.py``), so rows that differ only by it share the measured
  release: the benchmark trains with secure aggregation on, as the profile does.
- what the server holds of one site (``view``): its update in the clear, or only a sum.
- malicious-aggregator isolation: how many of the lying-server attacks recover one site's input
  exactly against the sites ``fedonco client`` runs, without TLS and under mutual TLS (key
  bindings). Without secure aggregation the server needs no attack: it holds every update.
- inversion of the server's view: not measured yet (``attacks/inversion.py``'s note says why).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

METHODS = ("groupnorm-pt", "dpsgd-pt", "ddp-sgd-pt")


@dataclass(frozen=True)
class Row:
    name: str
    method: str  # whose release the MIA columns measure
    secagg: bool
    dp: str  # "none", "per-site" or "distributed"


ROWS = (
    Row("no defence", "groupnorm-pt", False, "none"),
    Row("secure aggregation", "groupnorm-pt", True, "none"),
    Row("per-site DP-SGD", "dpsgd-pt", False, "per-site"),
    Row("distributed DP (needs secure aggregation)", "ddp-sgd-pt", True, "distributed"),
    Row("secure aggregation + per-site DP-SGD", "dpsgd-pt", True, "per-site"),
)


def isolation_counts(n: int, threshold: int) -> dict[str, tuple[int, int]]:
    """{site kind: (attacks that isolated the victim, attacks tried)} from the lying-server
    harness against the real site code: 'honest' (no TLS) and 'pki' (mutual TLS)."""
    from attacks.aggregator import threat_table

    rows = threat_table(n, threshold)
    return {
        kind: (sum(r.isolated for r in rows if r.sites == kind), sum(r.sites == kind for r in rows))
        for kind in ("honest", "pki")
    }


def _seed_results(run: Path) -> dict[int, dict]:
    from bench.results_doc import load_run

    return load_run(run).results


def _auc_cell(values: list[tuple[float, list[float]]]) -> str:
    if not values:
        return "not run"
    aucs = [a for a, _ in values]
    cis = ", ".join(f"[{lo:.2f}, {hi:.2f}]" for _, (lo, hi) in values)
    sd = f" ± {np.std(aucs, ddof=1):.3f}" if len(aucs) > 1 else ""
    return f"{np.mean(aucs):.3f}{sd} (CIs {cis})"


def _mia(results: dict[int, dict], method: str, key: str | None) -> list[tuple[float, list]]:
    out = []
    for r in results.values():
        mia = (r["methods"].get(method) or {}).get("mia") or {}
        top = mia.get(key) if key else mia
        if top and top.get("auc") is not None:
            out.append((float(top["auc"]), list(top["auc_ci95"])))
    return out


def _attack_names(results: dict[int, dict], method: str, key: str | None) -> str:
    names = set()
    for r in results.values():
        mia = (r["methods"].get(method) or {}).get("mia") or {}
        top = mia.get(key) if key else mia
        if top and top.get("attack"):
            names.add(top["attack"])
    return "/".join(sorted(names)) or "-"


def _epsilon(results: dict[int, dict], method: str) -> str:
    if not any(method in r["methods"] for r in results.values()):
        return "not run"
    eps = [
        r["methods"][method].get("epsilon")
        for r in results.values()
        if method in r["methods"] and r["methods"][method].get("epsilon") is not None
    ]
    return f"{max(eps):.2f}" if eps else "∞ (no DP)"


def threats_table(results: dict[int, dict], n_sites: int, threshold: int) -> dict:
    """The table (markdown) and its numbers from a run's per-seed results."""
    iso = isolation_counts(n_sites, threshold)
    lines = [
        f"Seeds {', '.join(str(s) for s in sorted(results))}; secure aggregation t = {threshold} "
        f"of {n_sites}. AUC: mean ± sd over seeds of the rung the attacker chose on its shadows "
        "(per-seed 95% CIs).",
        "",
        "| configuration | release | ε | black-box AUC (rung) | white-box AUC (rung) | "
        "server holds | isolation: no TLS | isolation: mTLS | inversion |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = []
    for row in ROWS:
        bb, wb = _mia(results, row.method, None), _mia(results, row.method, "whitebox")
        if row.secagg:
            view = "the sum of the sites' updates" + (
                " with everyone's noise shares" if row.dp == "distributed" else ""
            )
            no_tls = "{}/{} attacks".format(*iso["honest"])
            tls = "{}/{} attacks".format(*iso["pki"])
        else:
            view = "each site's update" + (" (DP-noised)" if row.dp == "per-site" else "")
            no_tls = tls = "always (no attack needed)"
        cells = {
            "configuration": row.name,
            "release": row.method,
            "epsilon": _epsilon(results, row.method),
            "black_box": _auc_cell(bb) + f" ({_attack_names(results, row.method, None)})",
            "white_box": _auc_cell(wb) + f" ({_attack_names(results, row.method, 'whitebox')})",
            "server_holds": view,
            "isolation_no_tls": no_tls,
            "isolation_mtls": tls,
            "inversion": "not measured",
        }
        rows.append({**cells, "black_box_aucs": bb, "white_box_aucs": wb})
        lines.append("| " + " | ".join(cells.values()) + " |")
    return {"markdown": "\n".join(lines) + "\n", "rows": rows, "isolation": iso}


def write_threats(run: Path, cfg) -> str:
    """threats.md and threats.json in ``run`` (a run directory of ``fedonco bench``)."""
    results = _seed_results(run)
    table = threats_table(results, len(cfg.sites), cfg.secagg.threshold)
    (run / "threats.md").write_text(table["markdown"])
    (run / "threats.json").write_text(json.dumps(table, indent=1, default=float) + "\n")
    return table["markdown"]


def _run_config(run: Path):
    from common.config import load_config

    for p in (run / "config.json", *sorted(run.glob("seed*/config.json"))):
        if p.is_file():
            return load_config(p)
    raise ValueError(f"{run}: no config.json of a benchmark run (nor seed<N>/config.json)")


def run_threats_cmd(args) -> int:
    """``fedonco threats``: the benchmark of the rows' releases with the white-box attacker on,
    then the table; ``--report RUN``: only the table, from a finished run."""
    from bench.options import BenchOptions
    from bench.run import run_bench
    from common.config import resolve_config, with_overrides

    if args.report:
        run = Path(args.report)
        print(write_threats(run, _run_config(run)), end="")
        return 0
    cfg = resolve_config(args.config, None, args.seed)
    cfg = with_overrides(cfg, **{"fl.methods": list(METHODS), "mia.whitebox": True})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = out / f"threats-{cfg.profile}-seed{cfg.seed}.json"
    config.write_text(json.dumps(cfg.model_dump(mode="json"), indent=1) + "\n")
    before = set(out.iterdir())
    rc = run_bench(BenchOptions(config=str(config), seeds=args.seeds, out=str(out)))
    runs = [p for p in out.iterdir() if p.is_dir() and p not in before]
    if len(runs) != 1:
        raise RuntimeError(f"expected one new run directory in {out}, found {len(runs)}")
    print(write_threats(runs[0], cfg), end="")
    print(f"\nthe table: {runs[0] / 'threats.md'} (and threats.json)")
    return rc
