"""The paper's claims and the standard profile's goals, checked against a run's results.

Pure functions of ``results.json`` (one seed): ``paper_claims`` gives one line per claim of the
paper with the measured numbers and "reproduced" / "not distinguishable" / "not reproduced" /
"not measured"; ``standard_goals`` one PASS/FAIL line per goal the standard profile is designed
to meet (a benchmark's verdict, printed by ``fedonco bench``, never a timed test).

Significance: a leakage comparison is "reproduced" only when the 95% intervals separate (the
AUC's bootstrap CI excludes 0.5; the DP method's AUC CI lies wholly below its twin's).
Non-overlapping 95% CIs is a conservative two-sample criterion (for two independent estimates
with equal standard errors it is a z-test at p ≈ 0.006); overlapping ones are "not
distinguishable", never a verdict either way. A per-site comparison (FedBN) has no CI per site: a
one-sided sign test over the sites at 5% (with five sites, all five must agree).
"""

from __future__ import annotations

from scipy.stats import binomtest

from common.methods import METHODS

LEAK_AUC, LEAK_CI_LO, LEAK_TPR = 0.65, 0.55, 0.05  # "leaks measurably"
DP_EPSILON, DP_UTILITY = 8.0, 0.8  # "DP keeps utility": eps <= 8 and Dice >= 0.8 x its twin
FEDAVG_DICE, WALL_S = 0.70, 20 * 60


def _mia(entry: dict | None) -> dict:
    return (entry or {}).get("mia") or {}


def _auc(entry) -> str:
    m = _mia(entry)
    if m.get("auc") is None:
        return "n/a"
    lo, hi = m.get("auc_ci95") or (None, None)
    ci = f" [{lo:.2f}, {hi:.2f}]" if lo is not None else ""
    tpr = m.get("tpr_at_1pct_fpr")
    tci = ((m.get("tpr") or {}).get("tpr_at_1pct_fpr") or {}).get("tpr_ci95")
    tci_s = f" [{tci[0]:.2f}, {tci[1]:.2f}]" if tci else ""
    return f"AUC {m['auc']:.3f}{ci}" + (f", TPR@1%FPR {tpr:.3f}{tci_s}" if tpr is not None else "")


def _verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("reproduced" if ok else "not reproduced")


def _ci(entry) -> tuple[float, float] | None:
    m = _mia(entry)
    ci = m.get("auc_ci95")
    return None if m.get("auc") is None or not ci or None in ci else (ci[0], ci[1])


def _lower(a: tuple | None, b: tuple | None) -> str:
    """Whether interval ``a`` lies wholly below ``b``: the verdict of "a < b"."""
    if a is None or b is None:
        return "not measured"
    if a[1] < b[0]:
        return "reproduced"
    return "not reproduced (the opposite, significantly)" if a[0] > b[1] else "not distinguishable"


def ceiling_tests(m: dict) -> dict:
    """The DP-ceiling tests of the quoted rung (``bench.audit_metrics.dp_ceiling_test``) by FPR
    point, estimable ones only."""
    ceiling = m.get("dp_ceiling") or (m.get("attacks") or {}).get(m.get("attack") or "", {}).get(
        "dp_ceiling"
    )
    tests = (ceiling or {}).get("tests") or {}
    return {k: v for k, v in tests.items() if v and v.get("estimable")}


def ceiling_text(m: dict) -> str:
    """Per estimable point, e.g. "TPR@10%FPR 0.120 [0.08, 0.17] <= bound 0.400 (p 0.99)"."""
    parts = []
    for k, t in ceiling_tests(m).items():
        p = (m.get("tpr") or {}).get(k) or {}
        ci = p.get("tpr_ci95")
        ci_s = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""
        rel = ">" if t["violates"] else "<="
        name = k.replace("tpr_at_", "TPR@").replace("pct_fpr", "%FPR")
        parts.append(
            f"{name} {t['tpr']:.3f}{ci_s} {rel} bound {t['bound']:.3f} (p {t['p_value']:.2g})"
        )
    return "; ".join(parts) or "no estimable ceiling test"


def paper_claims(results: dict) -> list[str]:
    """One line per claim of the paper, with this run's numbers."""
    ms = results["methods"]
    fedavg, fedbn = ms.get("fedavg"), ms.get("fedbn")
    lines = []
    chance = (0.5, 0.5)
    lines.append(
        f"FedAvg leaks membership (strongest attack's AUC CI above 0.5): "
        f"{_auc(fedavg)}: {_lower(chance if _ci(fedavg) else None, _ci(fedavg))}"
    )
    for name, spec in METHODS.items():
        if not spec.dp or name not in ms or spec.twin not in ms:
            continue
        dp, twin = ms[name], ms[spec.twin]
        lines.append(
            f"DP lowers leakage ({name} vs {spec.twin}; AUC CIs separate): {_auc(dp)} vs "
            f"{_auc(twin)}: {_lower(_ci(dp), _ci(twin))}"
        )
        d, t = dp.get("dice"), twin.get("dice")
        ok = None if d is None or not t else d >= DP_UTILITY * t
        ratio = f" ({d / t:.2f}x)" if d is not None and t else ""
        eps = dp.get("epsilon")
        lines.append(
            f"DP costs little Dice ({name} at eps {eps:.2f} vs {spec.twin}; the paper: "
            f"0.85 -> 0.79): {d:.3f} vs {t:.3f}{ratio}: {_verdict(ok)}"
            if d is not None and t is not None and eps is not None
            else f"DP costs little Dice ({name}): {_verdict(None)}"
        )
    if fedavg and fedbn:
        pairs = [
            (a, b)
            for a, b in zip(fedbn["dice_per_site"], fedavg["dice_per_site"], strict=True)
            if a is not None and b is not None
        ]
        better = sum(a > b for a, b in pairs)
        p = binomtest(better, len(pairs), 0.5, "greater").pvalue if pairs else None
        verdict = (
            "not measured" if p is None else "reproduced" if p < 0.05 else "not distinguishable"
        )
        p_s = "" if p is None else f", sign test p {p:.2g}"
        lines.append(
            f"FedBN helps the heterogeneous sites (per-site Dice above FedAvg's on "
            f"{better} of {len(pairs)} sites{p_s}; site mean "
            f"{fedbn['dice_site_mean']:.3f} vs {fedavg['dice_site_mean']:.3f}): "
            f"{verdict}"
        )
    else:
        lines.append(f"FedBN helps the heterogeneous sites: {_verdict(None)}")
    lines += reference_lines(ms)
    return lines


def reference_lines(ms: dict) -> list[str]:
    """What each federated method buys over ``local`` (each site alone) and loses to ``pooled``
    (all data in one place), in Dice, where those reference rows ran."""
    local, pooled = ms.get("local"), ms.get("pooled")
    if not local and not pooled:
        return []
    out = []
    for name, entry in ms.items():
        spec = METHODS.get(name)
        if spec is None or spec.kind != "federated" or entry.get("dice") is None:
            continue
        d, parts = entry["dice"], []
        if local and local.get("dice") is not None:
            parts.append(
                f"{d - local['dice']:+.3f} over local ({local['dice']:.3f}, each site "
                "alone on its own test set)"
            )
        if pooled and pooled.get("dice") is not None:
            parts.append(f"{d - pooled['dice']:+.3f} against pooled ({pooled['dice']:.3f})")
        out.append(f"What {name} buys (Dice {d:.3f}): {'; '.join(parts)}")
    return out


def _pass(ok: bool | None) -> str:
    return "n/a " if ok is None else ("PASS" if ok else "FAIL")


def standard_goals(results: dict) -> list[str]:
    """One PASS/FAIL line per goal of the standard profile."""
    ms = results["methods"]
    out = []
    wall = results.get("wall_s")
    took = f"{wall / 60:.1f} min" if wall is not None else "not measured on a run of these methods"
    out.append(
        f"{_pass(None if wall is None else wall <= WALL_S)} all methods and audits in <= "
        f"{WALL_S // 60} min: {took}"
    )
    d = (ms.get("fedavg") or {}).get("dice")
    out.append(
        f"{_pass(None if d is None else d >= FEDAVG_DICE)} FedAvg Dice >= {FEDAVG_DICE}: "
        f"{'n/a' if d is None else f'{d:.3f}'}"
    )
    for name, entry in ms.items():
        spec = METHODS.get(name)
        if spec is None or spec.dp:
            continue
        m = _mia(entry)
        ok = None
        if m.get("auc") is not None:
            lo = (m.get("auc_ci95") or [0.0])[0]
            ok = (
                m["auc"] >= LEAK_AUC
                and lo > LEAK_CI_LO
                and (m.get("tpr_at_1pct_fpr") or 0) >= LEAK_TPR
            )
        out.append(
            f"{_pass(ok)} {name} leaks measurably (AUC >= {LEAK_AUC}, CI low > "
            f"{LEAK_CI_LO}, TPR@1%FPR >= {LEAK_TPR}): {_auc(entry)}"
        )
    for name, spec in METHODS.items():
        if not spec.dp or name not in ms:
            continue
        dp, twin = ms[name], ms.get(spec.twin) or {}
        m = _mia(dp)
        eps, d, t = dp.get("epsilon"), dp.get("dice"), twin.get("dice")
        tests = ceiling_tests(m)
        lo, hi = m.get("auc_ci95") or (None, None)
        parts = [
            eps is not None and eps <= DP_EPSILON,
            d is not None and bool(t) and d >= DP_UTILITY * t,
            lo is not None and lo <= 0.5 <= hi,
            bool(tests) and not any(x["violates"] for x in tests.values()),
        ]
        ok = None if eps is None or d is None or not t or m.get("auc") is None else all(parts)
        out.append(
            f"{_pass(ok)} {name} keeps utility privately (eps <= {DP_EPSILON:g}, Dice >= "
            f"{DP_UTILITY} x {spec.twin}, AUC CI covers 0.5, no binomial DP-ceiling test "
            f"violated at 5%): eps {eps if eps is None else round(eps, 2)}, Dice "
            f"{d if d is None else round(d, 3)} vs {t if t is None else round(t, 3)}, "
            f"{_auc(dp)}, ceiling: {ceiling_text(m)}"
        )
    return out
