"""Results of a benchmark run: results.json / .md / .csv, history.json and plots (the contract is
in docs/architecture.md, "Contracts")."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import stat
from pathlib import Path

import numpy as np

from attacks.rungs import ORDER
from bench.claims import paper_claims, standard_goals
from common.config import DEFAULT_SITE_NAMES, Config
from common.layout import RunLayout
from common.methods import METHODS, SWEEP_METHOD
from common.records import read_history


def _nan(x) -> float:
    return float("nan") if x is None else float(x)


def _sites(results: dict) -> list[str]:
    """The run's roster (results.json ``sites``; runs before the roster had A-E)."""
    return list(results.get("sites") or DEFAULT_SITE_NAMES)


def method_entry(
    method: str, result: dict, history: list[dict], sites: list[str] = DEFAULT_SITE_NAMES
) -> dict:
    """One method's block of results.json, from its result.json and history.json; ``sites``:
    the roster, the order of ``dice_per_site``."""
    rounds = [r for r in history if "fit" in r]
    t = [r["timing_s"] for r in history]

    def total(key):
        return float(sum(x.get(key, 0.0) for x in t))

    def site_max(key):
        return [
            max((m.get(key, 0.0) for m in r["fit"]["sites"].values()), default=0.0) for r in rounds
        ]

    bytes_up = [m.get("bytes_up", 0.0) for r in rounds for m in r["fit"]["sites"].values()]
    return {
        "dice": result["dice"],
        "dice_site_mean": result["dice_site_mean"],
        "dice_global": result["dice_global"],
        "fp_rate_empty": result["fp_rate_empty"],
        "dice_per_site": [result["dice_per_site"].get(s) for s in sites],
        "ce_loss": result["ce_loss"],
        "rounds": result["rounds"],
        "rounds_aborted": sum(1 for r in history if r.get("aborted")),
        "n_params": result["n_params"],
        "initial_model_sha256": result["initial_model_sha256"],
        "final_model_sha256": result["final_model_sha256"],
        "evaluated_at": result["evaluated_at"],
        "device": result.get("device"),  # where it trained and evaluated (docs/gpu.md)
        "kind": result.get("kind", "federated"),
        "sweep": result.get("sweep"),  # a sweep run's setting: the frontier plot reads it
        "dice_all_sites": result.get("dice_all_sites"),
        "dice_cross": result.get("dice_cross"),
        "epsilon": result.get("epsilon"),
        "delta": result.get("delta"),
        "accountant": result.get("accountant"),
        "dp": result.get("dp"),
        "mia": result.get("mia"),
        "pretraining": result.get("pretraining"),  # a pretrained method's public check
        "timing_s": {
            "total": result.get("wall_s"),
            "train": float(sum(x.get("slowest_train", 0.0) for x in t)),
            "fit_phase": total("fit_phase"),
            "aggregate": total("aggregate"),
            "evaluate": total("evaluate"),
            "server_encode": total("encode"),
            "client_serialize": float(sum(site_max("encode_s")) + sum(site_max("decode_s"))),
            "transfer_and_wait": max(
                0.0,
                total("fit_phase")
                - float(sum(x.get("slowest_train", 0.0) for x in t))
                - float(sum(site_max("encode_s")) + sum(site_max("decode_s")))
                - float(sum(site_max("mask_s")))
                - total("secagg_server"),
            ),
            "secagg_server": total("secagg_server"),
            "secagg_client_mask": float(sum(site_max("mask_s"))),
            "fl_overhead_mean": float(np.mean([x.get("fl_overhead", 0.0) for x in t]))
            if t
            else None,
        },
        "bytes_up_per_client_round": float(np.mean(bytes_up)) if bytes_up else None,
        "failures": {r["round"]: r["failures"] for r in history if r.get("failures")},
        "secagg": bool(history and "secagg" in history[0]),
    }


def _fmt(x, nd=3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def markdown(results: dict) -> str:
    lines = [
        "| method | Dice | Dice (site mean) | "
        + " | ".join(f"Dice {s}" for s in _sites(results))
        + " | global Dice | FP rate (tumor-free) | CE | ε (δ) | rounds | wall s |",
        "|---" * (9 + len(_sites(results))) + "|",
    ]
    for m, r in results["methods"].items():
        lines.append(
            f"| {m} | {_fmt(r['dice'])} | {_fmt(r['dice_site_mean'])} | "
            + " | ".join(_fmt(d) for d in r["dice_per_site"])
            + f" | {_fmt(r['dice_global'])} | {_fmt(r['fp_rate_empty'], 2)} | {_fmt(r['ce_loss'], 4)}"
            + (
                f" | {r['epsilon']:.2f} ({r['delta']:g})"
                if r.get("epsilon") is not None
                else " | ∞"
            )
            + f" | {r['rounds']} | {_fmt(r['timing_s']['total'], 1)} |"
        )
    lines += [
        "",
        "Time per run (s), summed over rounds: training of the slowest site, the rest of the fit phase,",
        "aggregation and evaluation. FL overhead = (fit phase + aggregation − slowest training) / (fit phase + aggregation), mean over rounds.",
        "",
        "| method | train | client (de)serialize | server encode | secagg mask (client) | secagg unmask (server) | transfer & wait | fit phase | aggregate | evaluate | FL overhead |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m, r in results["methods"].items():
        if r.get("kind", "federated") != "federated":
            continue  # a reference row has no federated rounds (its wall time is in the table)
        t = r["timing_s"]
        lines.append(
            f"| {m} | {_fmt(t['train'], 1)} | {_fmt(t['client_serialize'], 2)} | {_fmt(t['server_encode'], 3)}"
            f" | {_fmt(t['secagg_client_mask'], 2)} | {_fmt(t['secagg_server'], 2)}"
            f" | {_fmt(t['transfer_and_wait'], 2)} | {_fmt(t['fit_phase'], 1)} | {_fmt(t['aggregate'], 3)} | {_fmt(t['evaluate'], 1)}"
            f" | {100 * t['fl_overhead_mean']:.1f}% |"
        )
    mia_rows = [(m, r["mia"]) for m, r in results["methods"].items() if r.get("mia")]
    if mia_rows:
        lines += _mia_table(mia_rows)
    return "\n".join(lines) + "\n"


RUNG_ORDER = ORDER  # the rung registry's order (attacks/rungs.py)


def _ci_text(ci) -> str:
    return f" [{_fmt(ci[0], 2)}, {_fmt(ci[1], 2)}]" if ci else ""


def _attack_cell(x: dict | None) -> str:
    if not x:
        return "n/a"
    tpr = x.get("tpr") or {}
    cell = (
        f"{_fmt(x['auc'])}{_ci_text(x['auc_ci95'])} / {_fmt(x['tpr_at_1pct_fpr'], 3)}"
        f"{_ci_text((tpr.get('tpr_at_1pct_fpr') or {}).get('tpr_ci95'))}"
    )
    if x.get("tpr_at_0.1pct_fpr") is not None:
        cell += (
            f" / {_fmt(x['tpr_at_0.1pct_fpr'], 4)}"
            f"{_ci_text((tpr.get('tpr_at_0.1pct_fpr') or {}).get('tpr_ci95'))}"
        )
    return cell + (" ⚠ " + x["error"] if x.get("error") else "")


def _tpr_cell(p: dict | None) -> str:
    """TPR [Clopper–Pearson 95%] at the threshold, with the false positives it let through."""
    if not p:
        return "not estimable"
    thr = "none" if p["threshold"] is None else f"{p['threshold']:.4g}"
    return (
        f"{_fmt(p['tpr'], 3)}{_ci_text(p['tpr_ci95'])} ({p['fp']}/{p['n_nonmembers']} FP, "
        f"threshold {thr})"
    )


def _ceiling_cell(mia: dict) -> str:
    """The DP-ceiling binomial tests of the quoted rung, or why none is made."""
    ceiling = mia.get("dp_ceiling") or (
        mia.get("attacks", {}).get(mia.get("attack") or "") or {}
    ).get("dp_ceiling")
    if not ceiling:
        return "no DP"
    parts = []
    for k, t in (ceiling.get("tests") or {}).items():
        name = k.replace("tpr_at_", "").replace("pct_fpr", "%")
        if t is None:
            continue
        if not t.get("estimable"):
            parts.append(f"{name}: not estimable ({t['reason']})")
        else:
            verdict = "VIOLATED" if t["violates"] else "holds"
            parts.append(
                f"{name}: TPR {t['tpr']:.3f} vs bound {t['bound']:.3f}, p {t['p_value']:.2g}"
                f" ({verdict})"
            )
    return f"ε {ceiling['epsilon']:.2f}: " + "; ".join(parts) if parts else "no test"


def _mia_table(mia_rows) -> list[str]:
    """The audit: one column per rung of the black-box attacker, then the auditor's online rungs
    (another threat model: it knows the candidate set) in their own columns; then the quoted
    rung's TPRs with their thresholds and the DP-ceiling tests."""
    present = {a for _m, mia in mia_rows for a in mia.get("attacks", {})}
    auditor = {a for _m, mia in mia_rows for a in (mia.get("auditor") or {}).get("attacks", {})}
    names = [a for a in RUNG_ORDER if a in present] + sorted(present - set(RUNG_ORDER))
    aud = [a for a in RUNG_ORDER if a in auditor]
    lines = [
        "",
        "Membership inference: AUC [95% CI] / TPR@1%FPR [95% CI] (/ TPR@0.1%FPR with >= "
        "1,000 non-members) per rung; members from train, non-members from holdout. Black "
        "box: only Predict, shadows from its own pool; the strongest rung is chosen on shadow "
        "data. Auditor (†): also knows the candidate set and trains online shadows on half "
        "of it. AUC CIs: stratified bootstrap; TPR CIs: exact (Clopper–Pearson) over the "
        "members at the threshold.",
        "",
        "| method | members / non-members | "
        + " | ".join(names)
        + "".join(f" | {a} †" for a in aud)
        + " | strongest (black box) | queries |",
        "|---" * (4 + len(names) + len(aud)) + "|",
    ]
    quoted = [
        "",
        "The quoted (strongest black-box) rung at each FPR, and the DP ceiling TPR <= "
        "e^ε·FPR + δ as a one-sided binomial test at that threshold (the threshold's FPR "
        "bounded by its Clopper–Pearson upper limit; made only with >= 10 / FPR "
        "non-members):",
        "",
        "| method | rung | TPR@10%FPR | TPR@1%FPR | TPR@0.1%FPR | DP ceiling test |",
        "|---|---|---|---|---|---|",
    ]
    notes, patients = [], []
    for m, mia in mia_rows:
        cells = [_attack_cell(mia.get("attacks", {}).get(a)) for a in names]
        cells += [_attack_cell((mia.get("auditor") or {}).get("attacks", {}).get(a)) for a in aud]
        queries = (mia.get("attack_info") or {}).get("queries")
        lines.append(
            f"| {m} | {mia.get('n_members', 'n/a')} / {mia.get('n_nonmembers', 'n/a')} | "
            + " | ".join(cells)
            + f" | {mia.get('attack') or mia.get('error')} | "
            f"{queries if queries is not None else 'n/a'} |"
        )
        tpr = (
            mia.get("tpr")
            or (mia.get("attacks", {}).get(mia.get("attack") or "") or {}).get("tpr")
            or {}
        )
        quoted.append(
            f"| {m} | {mia.get('attack') or 'n/a'} | "
            + " | ".join(
                _tpr_cell(tpr.get(k))
                for k in ("tpr_at_10pct_fpr", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr")
            )
            + f" | {_ceiling_cell(mia)} |"
        )
        if isinstance(mia.get("patient_level"), dict):
            patients.append(_patient_row(m, mia["patient_level"]))
        elif mia.get("patient_level"):
            notes.append(f"- {m}: patient level {mia['patient_level']}")
        if mia.get("selected_on"):
            notes.append(f"- {m}: strongest rung chosen on {mia['selected_on']}.")
        if mia.get("rung_warning"):
            notes.append(f"- ⚠ {m}: {mia['rung_warning']}")
        if mia.get("warning"):
            notes.append(f"- ⚠ {m}: {mia['warning']}")
    if patients:
        quoted += [
            "",
            "Per patient (imported CT, split by patient): the quoted rung's score of a "
            "case is the mean of its candidate slices' scores; a case is a member when its "
            "slices are train slices. AUC CI: stratified bootstrap over the cases (few "
            "cases: a wide CI); TPR at FPR x only with >= 1 / x non-member cases.",
            "",
            "| method | rung | member / non-member cases (slices) | AUC [95% CI] | "
            "TPR@10%FPR | TPR@1%FPR | TPR@0.1%FPR |",
            "|---|---|---|---|---|---|---|",
            *patients,
        ]
    return lines + quoted + _whitebox_table(mia_rows) + ([""] + notes if notes else [])


def _whitebox_table(mia_rows) -> list[str]:
    """The white-box attacker (``mia.whitebox``: the released weights, the same candidates),
    beside the black box's quoted rung; nothing when it did not run."""
    rows = [(m, mia, mia["whitebox"]) for m, mia in mia_rows if mia.get("whitebox")]
    if not rows:
        return []
    names = sorted({a for _m, _mia, wb in rows for a in wb.get("attacks", {})})
    lines = [
        "",
        "White box (`fedonco attack-whitebox`: per-candidate loss gradients of the released "
        "weights; the rung chosen on the shadows), beside the black box's quoted rung: AUC "
        "[95% CI] / TPR@1%FPR [95% CI].",
        "",
        "| method | " + " | ".join(names) + " | strongest (white box) | black box (quoted) |",
        "|---" * (3 + len(names)) + "|",
    ]
    for m, mia, wb in rows:
        cells = [_attack_cell(wb.get("attacks", {}).get(a)) for a in names]
        black = _attack_cell(mia.get("attacks", {}).get(mia.get("attack") or ""))
        lines.append(
            f"| {m} | "
            + " | ".join(cells)
            + f" | {wb.get('attack')} | {mia.get('attack')}: {black} |"
        )
    return lines


def _patient_row(m: str, p: dict) -> str:
    """One method's patient-level audit (``bench.audit_metrics.patient_level``)."""
    tprs = [
        _tpr_cell(p["tpr"][k]) if (p.get("tpr") or {}).get(k) else str(p.get(k))
        for k in ("tpr_at_10pct_fpr", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr")
    ]
    return (
        f"| {m} | {p.get('attack')} | {p['n_member_cases']} / {p['n_nonmember_cases']} "
        f"({p['n_member_slices']} / {p['n_nonmember_slices']}) | {_fmt(p['auc'])}"
        f"{_ci_text(p['auc_ci95'])}{' ⚠ ' + p['error'] if p.get('error') else ''} | "
        + " | ".join(tprs)
        + " |"
    )


def plots(histories: dict[str, list[dict]], results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for m, h in histories.items():
        rnds = [r["round"] for r in h]
        axes[0].plot(rnds, [_nan(r["eval"]["overall"].get("dice")) for r in h], marker="o", label=m)
        axes[1].plot(
            rnds, [_nan(r["eval"]["overall"].get("ce_loss")) for r in h], marker="o", label=m
        )
    axes[0].set(xlabel="round", ylabel="Dice (per image, tumor slices)", title="test Dice")
    axes[1].set(xlabel="round", ylabel="cross-entropy", title="test CE")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "training_curves.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    methods = list(results["methods"])
    w = 0.8 / max(len(methods), 1)
    x = np.arange(len(_sites(results)))
    for i, m in enumerate(methods):
        ax.bar(x + i * w, [_nan(d) for d in results["methods"][m]["dice_per_site"]], w, label=m)
    ax.set_xticks(x + w * (len(methods) - 1) / 2, [f"site {s}" for s in _sites(results)])
    ax.set(ylabel="Dice", title="final test Dice per site", ylim=(0, 1))
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "dice_per_site.png", dpi=110)
    plt.close(fig)


def disk_bytes(path: Path) -> int:
    """Bytes of the regular files under ``path`` (what ``du --apparent-size`` counts; links are
    not followed)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(root, name))
                if stat.S_ISREG(st.st_mode):
                    total += st.st_size
    return total


def write_report(
    cfg: Config, run_dir: Path, results_by_method: dict, manifest: dict, wall_s: float
) -> str:
    histories = {
        m: [r.to_json() for r in read_history(RunLayout(Path(res["dir"])).history)]
        for m, res in results_by_method.items()
    }
    results = {
        "profile": cfg.profile,
        "seed": cfg.seed,
        "sites": cfg.site_names,
        "data_summary": manifest["summary"],
        # "import": real CT (`fedonco data import`, `fedonco bench --data`); else generated
        "data_generator": manifest.get("generator", "procedural"),
        "wall_s": wall_s,
        "disk_bytes": disk_bytes(run_dir),  # the seed's directory: dataset, models, logs, audits
        "methods": {
            m: method_entry(m, r, histories[m], cfg.site_names)
            for m, r in results_by_method.items()
        },
    }
    results["claims"] = paper_claims(results)
    results["goals"] = standard_goals(results)
    (run_dir / "results.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    (run_dir / "history.json").write_text(json.dumps(histories, indent=1, default=float) + "\n")
    where = ", imported CT" if results["data_generator"] == "import" else ""
    table = markdown(results)
    table += "\nThe paper's claims, checked on this run:\n\n" + "".join(
        f"- {line}\n" for line in results["claims"]
    )
    (run_dir / "results.md").write_text(
        f"# FedOnco-Bench results: {cfg.profile} (seed {cfg.seed}){where}\n\n{table}"
    )
    with open(run_dir / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "method",
                "dice",
                "dice_site_mean",
                *(f"dice_{s}" for s in cfg.site_names),
                "dice_global",
                "fp_rate_empty",
                "ce_loss",
                "epsilon",
                "delta",
                "mia_auc",
                "mia_auc_lo",
                "mia_auc_hi",
                "mia_tpr_at_1pct_fpr",
                "mia_attack",
                "rounds",
                "n_params",
                "final_model_sha256",
                "wall_s",
            ]
        )
        for m, r in results["methods"].items():
            mia = r.get("mia") or {}
            ci = mia.get("auc_ci95") or [None, None]
            w.writerow(
                [
                    m,
                    r["dice"],
                    r["dice_site_mean"],
                    *r["dice_per_site"],
                    r["dice_global"],
                    r["fp_rate_empty"],
                    r["ce_loss"],
                    r["epsilon"],
                    r["delta"],
                    mia.get("auc"),
                    ci[0],
                    ci[1],
                    mia.get("tpr_at_1pct_fpr"),
                    mia.get("attack"),
                    r["rounds"],
                    r["n_params"],
                    r["final_model_sha256"],
                    r["timing_s"]["total"],
                ]
            )
    plots(histories, results, run_dir / "plots")
    dp_rows = {m: r for m, r in results["methods"].items() if r.get("epsilon") is not None}
    if dp_rows:
        privacy_utility(results, run_dir / "plots" / "privacy_utility.png")
        table += "\n" + privacy_table(results)
        (run_dir / "results.md").write_text(
            f"# FedOnco-Bench results: {cfg.profile} (seed {cfg.seed}){where}\n\n{table}"
        )
    return table


def privacy_table(results: dict) -> str:
    """ε (worst site) for the neighbouring relation it is stated for, the other relation's
    number beside it, and where the noise came from (docs/dp.md: a seeded simulation's noise is
    known to whoever knows the seed, the server included)."""
    lines = [
        "| run | σ | C | ε (worst site) | adjacency | ε add/remove | δ | accountant | randomness | Dice |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    seeded = False
    for m, r in results["methods"].items():
        dp = r.get("dp") or {}
        eps = "∞ (no DP)" if r.get("epsilon") is None else f"{r['epsilon']:.2f}"
        other = (dp.get("epsilon_by_adjacency") or {}).get("add-remove")
        rand = dp.get("randomness") or "n/a"
        seeded |= "seeded" in rand
        lines.append(
            f"| {m} | {_fmt(dp.get('noise_multiplier'), 2)} | {_fmt(dp.get('max_grad_norm'), 1)} | {eps}"
            f" | {dp.get('adjacency') or 'n/a'} | {_fmt(other, 2)} | {r.get('delta') or 'n/a'}"
            f" | {r.get('accountant') or 'n/a'} | {rand} | {_fmt(r['dice'])} |"
        )
    if seeded:
        lines += [
            "",
            "Randomness seeded-simulation: the sites' DP noise derives from the run's "
            "public seed (reproducible); whoever knows the seed, the server included, can "
            "subtract it, so ε holds only against the released model's users "
            "(`--dp-randomness site-secret` for site keys).",
        ]
    return "\n".join(lines) + "\n"


def privacy_utility(results: dict, path: Path) -> None:
    """Dice against epsilon for the DP runs; the non-DP GroupNorm reference as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    pts = sorted(
        (r["epsilon"], _nan(r["dice"]), (r.get("dp") or {}).get("noise_multiplier"))
        for r in results["methods"].values()
        if r.get("epsilon") is not None
    )
    swept = sorted(
        {
            (r.get("sweep") or {}).get("method", SWEEP_METHOD)
            for r in results["methods"].values()
            if r.get("epsilon") is not None
        }
    )
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=", ".join(swept))
    for eps, dice, sigma in pts:
        ax.annotate(
            f"σ={sigma:g}" if sigma else "",
            (eps, dice),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    for twin in sorted({METHODS[m].twin for m in swept if m in METHODS} - {None}):
        ref = results["methods"].get(twin)
        if ref is not None:
            ax.axhline(_nan(ref["dice"]), color="gray", ls="--", label=f"{twin} (no DP)")
    ax.set(
        xscale="log",
        xlabel="ε (worst site, δ as configured)",
        ylabel="Dice",
        title="privacy vs utility",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# several seeds: mean ± sd
# ----------------------------------------------------------------------------------------------

SEED_METRICS = ("dice", "epsilon", "mia_auc", "mia_tpr_at_1pct_fpr")


def _seed_values(entry: dict) -> dict[str, float | None]:
    mia = entry.get("mia") or {}
    return {
        "dice": entry.get("dice"),
        "epsilon": entry.get("epsilon"),
        "mia_auc": mia.get("auc"),
        "mia_tpr_at_1pct_fpr": mia.get("tpr_at_1pct_fpr"),
    }


def seed_summary(per_seed: dict[int, dict]) -> dict:
    """Per method, for each of ``SEED_METRICS``: every seed's value, their mean and sample standard
    deviation (ddof 1; None with fewer than two values). ``per_seed`` maps a seed to that run's
    results.json. The strongest attack is each seed's own (it may differ between seeds)."""
    methods: dict[str, dict] = {}
    for seed, res in sorted(per_seed.items()):
        for m, entry in res["methods"].items():
            if entry.get("sweep"):
                methods.setdefault(m, {})["sweep"] = entry["sweep"]
            for k, v in _seed_values(entry).items():
                methods.setdefault(m, {}).setdefault(k, {"per_seed": {}})["per_seed"][str(seed)] = v
    for stats in methods.values():
        for key, s in stats.items():
            if key == "sweep":
                continue
            xs = [float(v) for v in s["per_seed"].values() if v is not None and math.isfinite(v)]
            s["n"] = len(xs)
            s["mean"] = float(np.mean(xs)) if xs else None
            s["sd"] = float(np.std(xs, ddof=1)) if len(xs) >= 2 else None
    return methods


def _mean_sd(s: dict, nd: int = 3) -> str:
    if s["mean"] is None:
        return "n/a"
    return f"{s['mean']:.{nd}f}" + (f" ± {s['sd']:.{nd}f}" if s["sd"] is not None else "")


def write_seed_summary(run_dir: Path, profile: str, per_seed: dict[int, dict]) -> str:
    """results.json / results.md of a several-seed run: mean ± sd per method; each seed's own
    report stays in ``seed<N>/``."""
    summary = seed_summary(per_seed)
    out = {"profile": profile, "seeds": sorted(per_seed), "methods": summary}
    (run_dir / "results.json").write_text(json.dumps(out, indent=1, default=float) + "\n")
    lines = [
        f"Mean ± sd over seeds {', '.join(map(str, sorted(per_seed)))} (each seed: its own "
        "data, initial weights and training; its report in seed<N>/).",
        "",
        "| method | Dice | ε (worst site) | strongest attack AUC | TPR@1%FPR |",
        "|---|---|---|---|---|",
    ]
    for m, s in summary.items():
        eps = _mean_sd(s["epsilon"], 2) if s["epsilon"]["mean"] is not None else "∞ (no DP)"
        lines.append(
            f"| {m} | {_mean_sd(s['dice'])} | {eps} | {_mean_sd(s['mia_auc'])} | "
            f"{_mean_sd(s['mia_tpr_at_1pct_fpr'])} |"
        )
    table = "\n".join(lines) + "\n"
    (run_dir / "results.md").write_text(
        f"# FedOnco-Bench results: {profile}, {len(per_seed)} seeds\n\n{table}"
    )
    if any("sweep" in s for s in summary.values()):
        (run_dir / "plots").mkdir(exist_ok=True)
        frontier_plot(summary, run_dir / "plots" / "frontier.png")
    return table


def frontier_points(summary: dict) -> dict[str, list[tuple]]:
    """From a several-seed sweep's summary: per swept method, (value, Dice mean, Dice sd,
    TPR@1%FPR mean, TPR sd, AUC mean) sorted by the swept value; and its twin's row under
    ``"<twin> (no DP)"`` as one point without a value."""
    out: dict[str, list[tuple]] = {}

    def row(v, s):
        d, t, a = s["dice"], s["mia_tpr_at_1pct_fpr"], s["mia_auc"]
        return (v, d["mean"], d["sd"], t["mean"], t["sd"], a["mean"])

    for s in summary.values():
        sw = s.get("sweep")
        if sw:
            value = next(v for k, v in sw.items() if k != "method")
            out.setdefault(sw["method"], []).append(row(value, s))
    for method in list(out):
        out[method].sort(key=lambda r: r[0])
        twin = METHODS[method].twin if method in METHODS else None
        if twin in summary:
            out[f"{twin} (no DP)"] = [row(None, summary[twin])]
    return out


def frontier_plot(summary: dict, path: Path) -> None:
    """The privacy frontier: Dice and the strongest attack's TPR@1%FPR against the swept value
    (ε for a target_epsilon sweep), mean ± sd over seeds; the non-DP twin as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = frontier_points(summary)
    key = next((k for s in summary.values() for k in (s.get("sweep") or {}) if k != "method"), "")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    swept = {0: False, 1: False}  # per panel: any swept point drawn (else no log axis)
    for name, rows in pts.items():
        for k, (ax, (mean_i, sd_i)) in enumerate(zip(axes, ((1, 2), (3, 4)), strict=True)):
            means = [_nan(r[mean_i]) for r in rows]
            sds = [_nan(r[sd_i]) if r[sd_i] is not None else 0.0 for r in rows]
            if not np.isfinite(means).any():  # e.g. leakage with the audit off
                continue
            swept[k] = swept[k] or rows[0][0] is not None
            if rows[0][0] is None:  # the twin: no DP, a horizontal band
                ax.axhline(means[0], color="gray", ls="--", label=name)
                ax.axhspan(means[0] - sds[0], means[0] + sds[0], color="gray", alpha=0.15)
            else:
                ax.errorbar(
                    [r[0] for r in rows], means, yerr=sds, marker="o", capsize=3, label=name
                )
    label = "ε (target, worst site)" if key == "target_epsilon" else key
    axes[0].set(xlabel=label, ylabel="Dice (mean ± sd over seeds)", title="utility")
    axes[1].set(xlabel=label, ylabel="TPR at 1% FPR (strongest attack)", title="leakage")
    for k, ax in enumerate(axes):
        ax.grid(alpha=0.3)
        if swept[k]:
            from matplotlib.ticker import NullFormatter, ScalarFormatter

            ax.set_xscale("log")
            xs = sorted({x for line in ax.get_lines() for x in line.get_xdata() if x > 0})
            ax.set_xticks(xs)  # the swept values, written plainly (1, 2, 4, 8)
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not measured", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def note_failed_cells(run_dir: Path, rows: list[dict], **facts) -> None:
    """Add the cells that failed (after their retry) to ``run_dir``'s results.json
    (``failed_cells``) and results.md; a run none of whose cells succeeded gets both files with
    only them (``facts``: e.g. profile, seed)."""
    path, md = run_dir / "results.json", run_dir / "results.md"
    results = json.loads(path.read_text()) if path.is_file() else {**facts, "methods": {}}
    results["failed_cells"] = rows
    path.write_text(json.dumps(results, indent=1, default=float) + "\n")
    text = md.read_text() if md.is_file() else "# FedOnco-Bench results\n"
    lines = [
        "",
        "## Failed cells",
        "",
        "Not in the tables above: each was run and retried, and "
        "failed both times (its last error; all of them in results.json).",
        "",
        "| seed | cell | attempts | error |",
        "|---|---|---|---|",
    ]
    for r in rows:
        error = (r["error"] or "").splitlines()[0][:200].replace("|", "\\|")
        lines.append(f"| {r['seed']} | {r['cell']} | {r['attempts']} | {error} |")
    md.write_text(text.rstrip("\n") + "\n" + "\n".join(lines) + "\n")
