"""What each defence buys: one table over the attacks of docs/threat-model.md.

    fedonco threats --config configs/standard.toml --seeds 3 --out runs/threats   (make threats)
    fedonco threats --report RUN [RUN ...] [--table DIR]   (the table again, seeds of several runs)

``fedonco threats`` runs the benchmark (``bench.run.run_bench``: the real server, five site
processes, the release service and both attackers as their own processes) for the three releases
the rows need — ``fedavg`` (no DP, the profile's own recipe: many local epochs from scratch
with BatchNorm, the one that leaks in docs/results.md), ``groupnorm-pt`` (no DP, the DP rows' twin: public pretraining, the same short
fine-tuning), ``dpsgd-pt`` (per-site DP-SGD at the profile's ε) and ``ddp-sgd-pt``
(distributed DP at the same ε) — with the white-box attacker on (``mia.whitebox``),
and writes ``threats.md`` / ``threats.json`` beside the run's results from its results.json files
and the lying-server harness (``attacks.aggregator``, in process, deterministic).

Rows: no defence (FedAvg at the profile's own recipe, and the DP rows' twin), secure aggregation, per-site
DP, distributed DP, secure aggregation + per-site DP. Columns:

- black-box and white-box AUC of the strongest rung (chosen on shadow data), mean ± sd over the
  seeds, with the per-seed 95% CIs; measured on the release of the row's method. Secure
  aggregation does not change what is released (the sum it reveals is the sum, up to its
  quantisation, ``common/secagg.py``), so rows that differ only by it share the measured
  release: the benchmark trains with secure aggregation on, as the profile does.
- what the server holds of one site (``view``): its update in the clear, or only a sum.
- malicious-aggregator isolation: how many of the lying-server attacks recover one site's input
  exactly against the sites ``fedonco client`` runs, without TLS and under mutual TLS (key
  bindings). Without secure aggregation the server needs no attack: it holds every update.
- inversion of the server's view: the victim's slice reconstructed from what the server holds
  in round 1 of a FedSGD federation (``invert_views``; ``attacks/inversion.py``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

METHODS = ("fedavg", "groupnorm-pt", "dpsgd-pt", "ddp-sgd-pt")


@dataclass(frozen=True)
class Row:
    name: str
    method: str  # whose release the MIA columns measure
    secagg: bool
    dp: str  # "none", "per-site" or "distributed"


ROWS = (
    Row("no defence, FedAvg (the profile's leaky recipe)", "fedavg", False, "none"),
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


def _seed_results(runs: list[Path]) -> dict[int, dict]:
    """Every seed's results of the runs, their methods merged (a method of one seed in two runs
    is an error)."""
    from bench.runfiles import load_run

    out: dict[int, dict] = {}
    for run in runs:
        for seed, r in load_run(run).results.items():
            have = out.setdefault(seed, {"seed": seed, "methods": {}})["methods"]
            if twice := set(have) & set(r["methods"]):
                raise ValueError(f"seed {seed}: {sorted(twice)} in more than one of the runs")
            have.update(r["methods"])
    return out


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


def _dice(results: dict[int, dict], method: str) -> str:
    by_seed = {
        seed: float(r["methods"][method]["dice"])
        for seed, r in sorted(results.items())
        if method in r["methods"] and r["methods"][method].get("dice") is not None
    }
    if not by_seed:
        return "not run"
    d = list(by_seed.values())
    sd = f" ± {np.std(d, ddof=1):.3f}" if len(d) > 1 else ""
    only = (
        f"; seed{'s' * (len(d) > 1)} {', '.join(map(str, by_seed))} only"
        if len(by_seed) < len(results)
        else ""
    )
    return f"{np.mean(d):.3f}{sd} ({', '.join(f'{x:.3f}' for x in d)}{only})"


def _epsilon(results: dict[int, dict], method: str) -> str:
    if not any(method in r["methods"] for r in results.values()):
        return "not run"
    eps = [
        r["methods"][method].get("epsilon")
        for r in results.values()
        if method in r["methods"] and r["methods"][method].get("epsilon") is not None
    ]
    return f"{max(eps):.2f}" if eps else "∞ (no DP)"


def _inversion_cell(scored: list[dict]) -> str:
    if not scored:
        return "not measured"
    psnr = [s["psnr_max"] for s in scored]
    rec = [s["recovered_fraction"] for s in scored]
    dice = [s["mask_dice_max"] for s in scored]
    return (
        f"PSNR {np.mean(psnr):.1f} dB (max {np.max(psnr):.1f}), recovered {np.mean(rec):.2f} "
        f"(≥ {scored[0]['threshold_db']:.0f} dB), mask Dice ≤ {np.max(dice):.2f}"
    )


def threats_table(
    results: dict[int, dict],
    n_sites: int,
    threshold: int,
    inversion: dict[int, dict] | None = None,
) -> dict:
    """The table (markdown) and its numbers from a run's per-seed results (and per-seed
    inversion scores, ``invert_views``)."""
    inversion = inversion or {}
    iso = isolation_counts(n_sites, threshold)
    lines = [
        f"Seeds {', '.join(str(s) for s in sorted(results))}; secure aggregation t = {threshold} "
        f"of {n_sites}. AUC: mean ± sd over seeds of the rung the attacker chose on its shadows "
        "(per-seed 95% CIs). Inversion: the server's view of round 1 of a FedSGD federation "
        "(one SGD step on one tumour slice per site), the best-matching true slice's PSNR, the "
        "fraction of the slices the view covers recovered, the reconstructed mask's Dice; "
        f"seeds {', '.join(str(k) for k in sorted(inversion)) or 'none'}.",
        "",
        "| configuration | release | Dice (per seed) | ε | black-box AUC (rung) | white-box AUC (rung) | "
        "server holds | isolation: no TLS | isolation: mTLS | inversion |",
        "|---|---|---|---|---|---|---|---|---|---|",
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
            "dice": _dice(results, row.method),
            "epsilon": _epsilon(results, row.method),
            "black_box": _auc_cell(bb) + f" ({_attack_names(results, row.method, None)})",
            "white_box": _auc_cell(wb) + f" ({_attack_names(results, row.method, 'whitebox')})",
            "server_holds": view,
            "isolation_no_tls": no_tls,
            "isolation_mtls": tls,
            "inversion": _inversion_cell(
                [inv[row.name] for inv in inversion.values() if row.name in inv]
            ),
        }
        rows.append({**cells, "black_box_aucs": bb, "white_box_aucs": wb})
        lines.append("| " + " | ".join(cells.values()) + " |")
    return {"markdown": "\n".join(lines) + "\n", "rows": rows, "isolation": iso}


def seed_dirs(run: Path) -> dict[int, Path]:
    """Each seed's directory of a run (the run itself for a one-seed run)."""
    top = run / "results.json"
    if top.is_file() and "seed" in json.loads(top.read_text()):
        return {int(json.loads(top.read_text())["seed"]): run}
    return {int(p.name[4:]): p for p in sorted(run.glob("seed[0-9]*")) if p.is_dir()}


INVERSION_DIR = "threats-inversion"


def _inversion_file(seed_dir: Path) -> Path:
    return seed_dir / INVERSION_DIR / "inversion.json"


def write_threats(runs: list[Path], cfg, out: Path) -> str:
    """threats.md and threats.json in ``out`` from the seeds of ``runs`` (run directories of
    ``fedonco bench``, with each seed's inversion scores where ``invert_views`` ran)."""
    results = _seed_results(runs)
    inversion = {}
    for run in runs:
        for seed, d in seed_dirs(run).items():
            if seed not in inversion and _inversion_file(d).is_file():
                inversion[seed] = json.loads(_inversion_file(d).read_text())
    table = threats_table(results, len(cfg.sites), cfg.secagg.threshold, inversion)
    table["runs"] = [str(r) for r in runs]
    out.mkdir(parents=True, exist_ok=True)
    (out / "threats.md").write_text(table["markdown"])
    (out / "threats.json").write_text(json.dumps(table, indent=1, default=float) + "\n")
    return table["markdown"]


def _run_config(run: Path):
    from common.config import load_config

    for p in (run / "config.json", *sorted(run.glob("seed*/config.json"))):
        if p.is_file():
            return load_config(p)
    raise ValueError(f"{run}: no config.json of a benchmark run (nor seed<N>/config.json)")


def invert_missing(runs: list[Path], cfg) -> None:
    """Run the inversion step (``invert_views``) for every seed of ``runs`` that has no scores
    yet, on that seed's data and with its cached public pretraining."""
    import os

    from common.config import with_overrides
    from common.training.pretrain import CACHE_ENV

    done = {s for run in runs for s, d in seed_dirs(run).items() if _inversion_file(d).is_file()}
    for run in runs:
        for seed, d in seed_dirs(run).items():
            if seed in done or not (d / "data").is_dir():
                continue
            done.add(seed)
            os.environ[CACHE_ENV] = str(d / "cache")  # the run's public pretraining, not again
            log.info("inversion of the server's view, seed %d", seed)
            scfg = with_overrides(cfg, seed=seed)
            invert_views(scfg, d / "data", d / INVERSION_DIR, seed, d / "logs-inversion.log")


def run_threats_cmd(args) -> int:
    """``fedonco threats``: the benchmark of the rows' releases with the white-box attacker on,
    the inversion of the server's view per seed, then the table; ``--report RUN...``: the table
    from finished runs (with ``--invert``, first the inversion of seeds that lack it)."""
    from bench.options import BenchOptions
    from bench.run import run_bench
    from common.config import resolve_config, with_overrides

    if args.report:
        runs = [Path(r) for r in args.report]
        cfg = _run_config(runs[0])
        if args.invert:
            invert_missing(runs, cfg)
        out = Path(args.table) if args.table else runs[0]
        print(write_threats(runs, cfg, out), end="")
        return 0
    methods = list(METHODS)
    if args.methods:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        if not methods or set(methods) - set(METHODS) or len(set(methods)) != len(methods):
            raise ValueError(
                f"--methods {args.methods!r}: give distinct ones of {', '.join(METHODS)}"
            )
    cfg = resolve_config(args.config, None, args.seed)
    cfg = with_overrides(cfg, **{"fl.methods": methods, "mia.whitebox": True})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = out / f"threats-{cfg.profile}-seed{cfg.seed}.json"
    config.write_text(json.dumps(cfg.model_dump(mode="json"), indent=1) + "\n")
    before = set(out.iterdir())
    rc = run_bench(BenchOptions(config=str(config), seeds=args.seeds, out=str(out)))
    runs = [p for p in out.iterdir() if p.is_dir() and p not in before]
    if len(runs) != 1:
        raise RuntimeError(f"expected one new run directory in {out}, found {len(runs)}")
    if not args.no_invert:
        invert_missing(runs, cfg)
    print(write_threats(runs, cfg, runs[0]), end="")
    print(f"\nthe table: {runs[0] / 'threats.md'} (and threats.json)")
    return rc


# ---------------------------------------------------------------------------------------------
# Inversion of the server's view

# The setting where inversion is known to work on classifiers: FedSGD, one plain-SGD step on a
# batch of one, each site holding one training slice (its first tumour slice), round 1.
FEDSGD = {
    "train.rounds": 1,
    "train.local_epochs": 1,
    "train.batch_size": 1,
    "train.optimizer": "sgd",
}
INVERSION_BUDGET = ("--steps", "300", "--restarts", "1")  # fixed before any run, not tuned
VICTIM_INDEX = 0  # the roster's first site is the victim of the rows without secure aggregation


def _views_for(cfg, row: Row, sites: dict, seed: int):
    """(the view's config, its RoundView of round 1) for ``row`` under FEDSGD."""
    from common.config import with_overrides
    from common.fl.simulate import simulate_federation
    from common.model import get_params
    from common.training.pretrain import initial_model

    # round 1 starts where the run's round 1 did: the method's own initial model (its public
    # pretraining with the recipe's optimizer), whatever FEDSGD's local step is
    start = get_params(initial_model(cfg.for_method(row.method), row.method))
    mcfg = with_overrides(cfg.for_method(row.method), **FEDSGD, **{"secagg.enabled": row.secagg})
    seen = []
    simulate_federation(mcfg, row.method, sites, seed=seed, observe=seen.append, initial=start)
    return mcfg, seen[0]


def write_views(cfg, data_dir: Path, out: Path, seed: int) -> dict[str, dict]:
    """For each row, what the server holds in round 1 of a FEDSGD federation of one tumour slice
    per site (the row's method, DP and secure aggregation): a directory the inversion attacker
    reads (view.json, sent.npz, held.npz, config.json), and the true slices it is scored on
    (the victim's, or every site's where the server holds only a sum)."""
    from attacks.shadows import dataset
    from common.data.loader import load_arrays
    from common.io import save_npz

    window = tuple(cfg.data.window)
    truth, sites = {}, {}
    for entry in cfg.sites:
        images, masks, *_ = load_arrays(data_dir, "train", entry.name)
        tumour = np.flatnonzero(masks.reshape(len(masks), -1).any(axis=1))
        i = int(tumour[0]) if len(tumour) else 0
        truth[entry.name] = (images[i : i + 1], masks[i : i + 1])
        sites[entry.name] = dataset(images[i : i + 1], masks[i : i + 1], window)
    victim = cfg.sites[VICTIM_INDEX].name
    views = {}
    for k, row in enumerate(ROWS):
        mcfg, rv = _views_for(cfg, row, sites, seed)
        if rv.uploads and not row.secagg:
            kind, held, covers = "update", rv.uploads[victim], [victim]
        elif row.dp == "distributed":
            kind, held, covers = "noisy-gradient-sum", rv.summed, sorted(sites)
        else:
            kind, covers = "mean", sorted(sites)
            held = {n: np.asarray(v / rv.total, np.float32) for n, v in rv.summed.items()}
        d = out / f"view{k}"
        d.mkdir(parents=True, exist_ok=True)
        save_npz(d / "sent.npz", {n: np.asarray(v) for n, v in rv.sent.items()})
        save_npz(d / "held.npz", {n: np.asarray(v, np.float32) for n, v in held.items()})
        (d / "view.json").write_text(json.dumps({"method": row.method, "kind": kind}) + "\n")
        (d / "config.json").write_text(json.dumps(mcfg.model_dump(mode="json"), indent=1) + "\n")
        views[row.name] = {"dir": d, "kind": kind, "covers": covers}
    for v in views.values():
        v["truth"] = [truth[s] for s in v["covers"]]
    return views


def invert_views(cfg, data_dir: Path, out: Path, seed: int, log_file: Path) -> dict[str, dict]:
    """Write the views (``write_views``), run the inversion attacker on each as its own process,
    and score its reconstruction against the true slices (``attacks.inversion``)."""
    from attacks.inversion import match_reconstructions
    from bench.fleet import fedonco, run_relaying
    from common.io import load_npz
    from common.transforms import window_hu

    views = write_views(cfg, data_dir, out, seed)
    scored = {}
    for name, v in views.items():
        d = v["dir"]
        args = ["attack-inversion", "--view", str(d), "--config", str(d / "config.json")]
        args += ["--out", str(d / "attack"), "--seed", str(seed), *INVERSION_BUDGET]
        rc = run_relaying(fedonco(*args), log_file, f"inversion, {name}")
        if rc != 0:
            raise RuntimeError(f"inversion attacker exited {rc}: see {log_file}")
        rec = load_npz(d / "attack" / "reconstruction.npz")
        info = json.loads((d / "attack" / "attack.json").read_text())
        images = np.concatenate([window_hu(i, tuple(cfg.data.window)) for i, _m in v["truth"]])
        masks = np.concatenate([m for _i, m in v["truth"]])
        match = match_reconstructions(rec["images"], rec["masks"], images, masks)
        scored[name] = {
            "kind": v["kind"],
            "sites": v["covers"],
            "cosine": info["cosine"],
            "psnr_max": match["psnr_max"],
            "ssim_mean": match["ssim_mean"],
            "mask_dice_max": max(r["mask_dice"] for r in match["per_slice"]),
            "recovered_fraction": match["recovered_fraction"],
            "threshold_db": match["threshold_db"],
            "wall_s": info["wall_s"],
        }
    (out / "inversion.json").write_text(json.dumps(scored, indent=1) + "\n")
    return scored
