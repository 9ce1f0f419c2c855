"""The membership-inference audit of one released model, run by the benchmark (not the attacker).

The benchmark draws members from the sites' ``train`` splits (stratified by site) and
non-members from their ``holdout`` splits, hands the attacker the candidate slices and masks
without labels, starts the release service and the attacker as separate processes, and scores
what comes back: AUC with a bootstrap CI, TPR at low FPR with exact CIs, per site, and the DP
ceiling test (``bench.audit_metrics``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from attacks.rungs import AUDITOR_RUNGS, QUERY_RUNGS
from bench.fleet import fedonco, run_relaying, spawn, stop, wait_for_port
from common.config import Config
from common.data.loader import load_arrays, sample_params
from common.data.store import read_manifest
from common.io import GROUP_READ, load_npz, save_npz, write_json_atomic
from common.layout import RunLayout
from common.seeds import candidates_rng

log = logging.getLogger(__name__)
AUDITOR_HEADLINE = "lira_online"  # the auditor's column quotes this rung (a fixed choice)
AUDIT_SCORES = "audit_scores.npz"  # <method>/audit/: the scores and labels the report scored
SCORE_PREFIX = "score_"


def draw_candidates(
    data_dir: Path, n_members: int, seed: int, nonmember_ratio: int = 1, with_cases: bool = False
):
    """(images, masks, is_member, sites), shuffled: members from the sites' train splits,
    ``nonmember_ratio`` times as many non-members from their holdout splits, matched per (site,
    tumour present or not). ``with_cases``: a fifth array, each candidate's case (patient) id
    from its sample record in the manifest (an imported dataset's ``case``; "" where the dataset
    records none, as the generator's do); the draw itself is the same either way.

    Up to ``n_members`` / (the number of sites) members per site, split between tumour and
    tumour-free slices in the site's own training proportions; each stratum takes min(its quota,
    its train slices, its holdout slices / ratio) members and ratio times as many non-members (TPR at 0.1% FPR needs
    >= 1,000 non-members, more than a profile has training slices). Members and non-members then
    come from the
    sites, and carry tumours, in the same proportions: a site whose scanner shifts every score, or
    a chance difference in tumour prevalence (the loss of a model that predicts nothing is ~1 per
    tumour slice and ~0 otherwise), cannot masquerade as leakage or hide it.
    """
    rng = candidates_rng(seed)
    manifest = read_manifest(data_dir)
    parts = []
    sites = manifest["site_names"]
    per_site = max(1, n_members // len(sites))
    for site in sites:
        train = load_arrays(data_dir, "train", site, manifest)[:2]
        holdout = load_arrays(data_dir, "holdout", site, manifest)[:2]
        cases = [
            _case_ids(manifest, split, site, len(arrays[0]), with_cases)
            for split, arrays in (("train", train), ("holdout", holdout))
        ]
        has = [m.reshape(len(m), -1).any(axis=1) for _, m in (train, holdout)]
        n_tumour = int(has[0].sum())
        quota_t = round(min(per_site, len(has[0])) * n_tumour / max(len(has[0]), 1))
        quotas = {True: quota_t, False: min(per_site, len(has[0])) - quota_t}
        for stratum, quota in quotas.items():
            pools = [np.flatnonzero(h == stratum) for h in has]
            k = min(quota, len(pools[0]), len(pools[1]) // nonmember_ratio)
            for (images, masks), ids, pool, member, n in zip(
                (train, holdout), cases, pools, (True, False), (k, k * nonmember_ratio), strict=True
            ):
                idx = np.sort(rng.choice(pool, size=n, replace=False))
                parts.append(
                    (images[idx], masks[idx], np.full(n, member), np.full(n, site), ids[idx])
                )
    images, masks, member, sites, ids = (np.concatenate(x) for x in zip(*parts, strict=True))
    order = rng.permutation(len(images))
    drawn = images[order], masks[order], member[order], sites[order]
    return (*drawn, ids[order].astype(str)) if with_cases else drawn


def _case_ids(manifest: dict, split: str, site: str, n: int, wanted: bool) -> np.ndarray:
    """The case id of each of the ``n`` slices ``load_arrays`` gives for (split, site), "" where
    the sample record has none (or ``wanted`` is False): the records are in the arrays' order
    (both read the manifest's shards in turn)."""
    if not wanted:
        return np.full(n, "")
    records = sample_params(manifest, split, site)
    if len(records) != n:
        raise ValueError(f"{split} site {site}: {len(records)} sample records for {n} slices")
    return np.array([str(r.get("case") or "") for r in records] or [""])[:n]


def attacker_pool(data_dir: Path, out: Path) -> Path:
    """A dataset directory holding only the public ``attacker`` split (shards + a manifest that
    lists nothing else): the attacker process is pointed here and cannot read training data."""
    if (out / "manifest.json").is_file():
        return out
    manifest = read_manifest(data_dir)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shards = [e for e in manifest["shards"] if e["split"] == "attacker"]
    for e in shards:
        (tmp / e["file"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data_dir / e["file"], tmp / e["file"])
    keep = {k: v for k, v in manifest.items() if k not in ("shards", "summary")}  # public facts
    write_json_atomic(tmp / "manifest.json", {**keep, "shards": shards})
    tmp.rename(out)
    return out


@contextlib.contextmanager
def local_release(method_dir: Path, logs: Path, device: str = "cpu"):
    """A release service on 127.0.0.1 serving every release under ``method_dir`` by its relative
    path (``release``, or FedBN's ``site-state/<method>/site<S>/release``) on ``device``; yields
    its address."""
    port_file, log_file = logs / "release.port", logs / "release.log"
    port_file.unlink(missing_ok=True)
    server = spawn(
        fedonco(
            "release",
            "serve",
            "--models-root",
            str(method_dir),
            "--address",
            "127.0.0.1:0",
            "--port-file",
            str(port_file),
            "--device",
            device,
        ),
        log_file,
    )
    try:
        yield f"127.0.0.1:{wait_for_port(port_file, server, log_file)}"
    finally:
        stop([server])


def run_attacker(
    cfg,
    config_path,
    address: str,
    jobs: dict,
    log_file: Path,
    pool: Path,
    tls_dir: Path | None = None,
) -> dict:
    """The attacker as its own process: ``jobs`` maps a tag to (model name on the release service
    at ``address``, candidate images, masks, output directory); the attacker gets the unlabeled
    candidates and the pool, and its only access to the models is Predict (over TLS, verified
    against ``tls_dir``, when given). Returns {tag: (scores, attack info)}."""
    args = [
        "attack",
        "--target",
        address,
        "--pool",
        str(pool),
        "--config",
        str(config_path),
        "--seed",
        str(cfg.seed),
        "--device",
        cfg.train.device,
    ]
    if tls_dir is not None:
        args += ["--tls-dir", str(tls_dir)]
    for tag, (model, images, masks, sites, out) in jobs.items():
        out.mkdir(parents=True, exist_ok=True)
        # no labels for the attacker; the site a slice came from is not secret
        np.savez(out / "candidates.npz", images=images, masks=masks, sites=sites)
        args += ["--model", model, "--candidates", str(out / "candidates.npz"), "--out", str(out)]
        if tag != "all":  # a site's own release (FedBN): which site released it is public
            args += ["--site", tag]
    rc = run_relaying(fedonco(*args), log_file, f"audit of {log_file.parent.parent.name}")
    if rc != 0:
        raise RuntimeError(f"attacker exited {rc}: see {log_file}")
    return {
        tag: (load_npz(out / "scores.npz"), json.loads((out / "attack.json").read_text()))
        for tag, (_m, _i, _k, _s, out) in jobs.items()
    }


def save_audit_scores(
    path: Path, scores: dict, member: np.ndarray, sites: np.ndarray, cases: np.ndarray | None = None
) -> None:
    """Every rung's pooled per-candidate scores with the candidates' membership labels and
    sites, as the referee scored them (``audit_metrics``): ``fedonco verify`` recomputes the
    reported AUCs and TPRs from this file. A plain .npz (no pickle): ``is_member`` (bool),
    ``sites`` (str), ``score_<rung>`` (float64) in candidate order, and ``cases`` (str, each
    candidate's patient) when the dataset records cases (the patient-level audit)."""
    arrays = {f"{SCORE_PREFIX}{k}": np.asarray(v, np.float64) for k, v in scores.items()}
    arrays.update(is_member=np.asarray(member, bool), sites=np.asarray(sites).astype(str))
    if cases is not None:
        arrays["cases"] = np.asarray(cases).astype(str)
    save_npz(path, arrays, mode=GROUP_READ)


def load_audit_scores(path: Path) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """(scores per rung, is_member, sites) of ``save_audit_scores``' file."""
    z = load_npz(path)
    scores = {k[len(SCORE_PREFIX) :]: v for k, v in z.items() if k.startswith(SCORE_PREFIX)}
    return scores, z["is_member"], z["sites"]


def load_audit_cases(path: Path) -> np.ndarray | None:
    """The candidates' case ids ``save_audit_scores`` saved, or None (no case ids recorded)."""
    return load_npz(path).get("cases")


def score_rungs(scores: dict, member: np.ndarray, sites: np.ndarray, result: dict, cfg) -> dict:
    """Every rung's ``audit_metrics`` (AUC with CI, TPRs, per site, the DP ceiling at the run's
    ε) from its pooled per-candidate scores."""
    from bench.audit_metrics import audit_metrics

    eps, delta = result.get("epsilon"), result.get("delta")
    return {
        name: audit_metrics(
            s,
            member,
            sites=sites,
            epsilon=eps,
            delta=delta,
            n_boot=cfg.mia.bootstrap,
            seed=cfg.seed,
        )
        for name, s in scores.items()
    }


def strongest_rung(ladders: list[dict]) -> tuple[str | None, str]:
    """The rung the summary quotes, from what the attacker measured on its own shadows (the mean
    of each rung's shadow AUC over the targets), never from the target's labels; with one shadow
    (nothing to measure on) the attacker's fixed choice. Returns (rung, how it was chosen)."""
    tables = [lad.get("selection") or {} for lad in ladders]
    if tables and all(tables):
        rungs = set.intersection(*(set(t) for t in tables))
        mean = {r: float(np.mean([t[r] for t in tables])) for r in rungs}
        if mean:
            return max(sorted(mean), key=mean.get), "shadow AUC " + ", ".join(
                f"{r} {mean[r]:.3f}" for r in sorted(mean, key=mean.get, reverse=True)
            )
    picks = [lad.get("strongest") for lad in ladders if lad.get("strongest")]
    if picks:
        return picks[0], "fixed order (one shadow)"
    return None, "no ladder ran"


def weaker_rung_warning(attacks: dict, quoted: str | None) -> str | None:
    """Whether the quoted rung understates the leakage: another queried rung of the same run has
    an AUC above the quoted AUC plus the quoted rung's 95% CI half-width. A check after the fact
    on the target's labels, reported as a warning; it never changes which rung is quoted (that
    is chosen on shadow data only)."""
    top = attacks.get(quoted or "") or {}
    if top.get("auc") is None or not top.get("auc_ci95"):
        return None
    lo, hi = top["auc_ci95"]
    half = (hi - lo) / 2
    stronger = {
        r: v["auc"]
        for r, v in attacks.items()
        if r in QUERY_RUNGS
        and r != quoted
        and v.get("auc") is not None
        and v["auc"] > top["auc"] + half
    }
    if not stronger:
        return None
    others = ", ".join(f"{r} {a:.3f}" for r, a in sorted(stronger.items(), key=lambda x: -x[1]))
    return (
        f"the quoted rung {quoted} (AUC {top['auc']:.3f}, CI half-width {half:.3f}) is weaker "
        f"than {others} on the same run: the headline understates the leakage"
    )


def patient_audit(
    scores: dict, member: np.ndarray, cases: np.ndarray, rung: str | None, cfg: Config
) -> dict | str:
    """The audit at patient level (``bench.audit_metrics.patient_level``) of the quoted ``rung``,
    from the pooled per-candidate scores: each candidate slice was scored by its own target (the
    global release, or FedBN its site's) and a case lies in one site, so a case's slices all come
    from one target and the per-case mean is taken per target."""
    from bench.audit_metrics import patient_level

    if rung not in scores:
        return "n/a: no quoted rung"
    return {
        "attack": rung,
        **patient_level(scores[rung], member, cases, n_boot=cfg.mia.bootstrap, seed=cfg.seed),
    }


def local_targets(method_dir: Path) -> dict[str, str]:
    """The released model(s) of a run on this machine, as names relative to ``method_dir``:
    {"all": "release"} or, FedBN, one per site."""
    layout = RunLayout(method_dir)
    if (layout.release / "release.json").is_file():
        return {"all": layout.release.name}
    return {s: str(p) for s, p in layout.site_releases(relative=True).items()}


def audit(
    cfg: Config,
    config_path: Path,
    method_dir: Path,
    data_dir: Path,
    result: dict,
    targets: dict | None = None,
    address: str | None = None,
    tls_dir: Path | None = None,
) -> dict:
    """Run the attacker against the release(s) and score the answers (results' mia).

    ``targets`` maps "all" (one global model) or site IDs (FedBN: shared weights + that site's
    norm layers, each attacked on its own site's candidates, scores pooled) to model names on the
    release service at ``address``; by default the run's releases on disk, served here by a
    local release service. One attacker process attacks every target (``tls_dir``: the
    release service at ``address`` speaks TLS)."""
    from bench.audit_metrics import roc_plot

    images, masks, member, sites, cases = draw_candidates(
        data_dir, cfg.mia.n_members, cfg.seed, cfg.mia.nonmember_ratio, with_cases=True
    )
    pool = attacker_pool(data_dir, method_dir.parent / "attacker-pool")
    logs, out = method_dir / "logs", method_dir / "audit"
    logs.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if targets is None:
        targets = local_targets(method_dir)
    if not targets:
        return {"error": "no released model found", "attacks": {}}
    picks = {t: np.ones(len(images), bool) if t == "all" else sites == t for t in targets}
    jobs = {
        t: (name, images[picks[t]], masks[picks[t]], sites[picks[t]], out / t)
        for t, name in targets.items()
    }
    if address is None:
        with local_release(method_dir, logs, cfg.train.device) as local:
            answers = run_attacker(cfg, config_path, local, jobs, logs / "attacker.log", pool)
    else:
        answers = run_attacker(
            cfg, config_path, address, jobs, logs / "attacker.log", pool, tls_dir
        )
    scores, info = {}, {"queries": 0, "targets": sorted(targets), "per_target": {}}
    for tag, (part, part_info) in answers.items():
        info["queries"] += part_info["queries"]
        info["per_target"][tag] = {k: part_info.get(k) for k in ("ladder", "auditor", "wall_s")}
        info["shared_timing_s"] = part_info.get("shared_timing_s")  # the shadows' training
        info["device"] = part_info.get("device")  # where the attacker's shadows ran
        for k, v in part.items():
            scores.setdefault(k, np.full(len(images), np.nan))[picks[tag]] = v
    covered = ~np.isnan(next(iter(scores.values())))
    member, sites, cases = member[covered], sites[covered], cases[covered]
    cases = cases if (cases != "").all() else None  # an imported dataset's patients, or none
    scores = {k: v[covered] for k, v in scores.items()}
    save_audit_scores(out / AUDIT_SCORES, scores, member, sites, cases)  # `fedonco verify` rescores
    wall = time.perf_counter() - t0
    attacks = score_rungs(scores, member, sites, result, cfg)
    roc_plot({k: (v, member) for k, v in scores.items()}, out / "roc.png")
    auditor = {k: attacks.pop(k) for k in AUDITOR_RUNGS if k in attacks}
    best, selection = strongest_rung([i.get("ladder") or {} for i in info["per_target"].values()])
    top = attacks.get(best, {})
    mia = {
        "auc": top.get("auc"),
        "auc_ci95": top.get("auc_ci95"),
        "tpr_at_10pct_fpr": top.get("tpr_at_10pct_fpr"),
        "tpr_at_1pct_fpr": top.get("tpr_at_1pct_fpr"),
        "tpr_at_0.1pct_fpr": top.get("tpr_at_0.1pct_fpr"),
        "tpr": top.get("tpr"),
        "dp_ceiling": top.get("dp_ceiling"),
        "n_members": int(member.sum()),
        "n_nonmembers": int((~member).sum()),
        "attack": best,
        "selected_on": selection,
        "attacks": attacks,
        "error": top.get("error"),
        "attacker_wall_s": wall,
        "attack_info": info,
    }
    if auditor:
        head = auditor.get(AUDITOR_HEADLINE, {})
        mia["auditor"] = {
            "attack": AUDITOR_HEADLINE,
            "auc": head.get("auc"),
            "auc_ci95": head.get("auc_ci95"),
            "tpr_at_1pct_fpr": head.get("tpr_at_1pct_fpr"),
            "attacks": auditor,
            "threat_model": "knows the candidate set (not the labels); online "
            "shadows that include half of the candidates",
        }
    if cases is not None:
        mia["patient_level"] = patient_audit(scores, member, cases, best, cfg)
    weaker = weaker_rung_warning(attacks, best)
    if weaker:
        mia["rung_warning"] = weaker
        log.warning("%s", weaker)
    blind = attacks.get("blind", {}).get("auc")
    if blind is not None and not 0.45 <= blind <= 0.55:
        mia["warning"] = (
            f"blind baseline AUC {blind:.3f} outside [0.45, 0.55]: the member/non-member split may be biased"
        )
    return mia


WHITEBOX_SCORES = "whitebox_scores.npz"  # <method>/audit-whitebox/: as AUDIT_SCORES


def whitebox_audit(
    cfg: Config, config_path: Path, method_dir: Path, data_dir: Path, result: dict
) -> dict:
    """The white-box attacker (``fedonco attack-whitebox``, its own process) against the run's
    release(s) on disk, on the same candidates as the black-box audit (the same draw), scored
    like it: every rung's AUC with CI and TPRs, and the rung the attacker chose on its shadows.
    The attacker reads the released weights and its pool, never the labels."""
    from attacks.whitebox import WB_RUNGS

    images, masks, member, sites = draw_candidates(
        data_dir, cfg.mia.n_members, cfg.seed, cfg.mia.nonmember_ratio
    )
    pool = attacker_pool(data_dir, method_dir.parent / "attacker-pool")
    logs, out = method_dir / "logs", method_dir / "audit-whitebox"
    logs.mkdir(parents=True, exist_ok=True)
    targets = local_targets(method_dir)
    if not targets:
        return {"error": "no released model found", "attacks": {}}
    t0 = time.perf_counter()
    args = ["attack-whitebox", "--pool", str(pool), "--config", str(config_path)]
    args += ["--seed", str(cfg.seed), "--device", cfg.train.device]
    picks = {t: np.ones(len(images), bool) if t == "all" else sites == t for t in targets}
    for tag, name in targets.items():
        d = out / tag
        d.mkdir(parents=True, exist_ok=True)
        np.savez(d / "candidates.npz", images=images[picks[tag]], masks=masks[picks[tag]])
        args += ["--release", str(method_dir / name), "--candidates", str(d / "candidates.npz")]
        args += ["--out", str(d)] + (["--site", tag] if tag != "all" else [])
    log_file = logs / "attacker-whitebox.log"
    rc = run_relaying(fedonco(*args), log_file, f"white-box audit of {method_dir.name}")
    if rc != 0:
        raise RuntimeError(f"white-box attacker exited {rc}: see {log_file}")
    scores = {r: np.full(len(images), np.nan) for r in WB_RUNGS}
    infos = {}
    for tag in targets:
        part = load_npz(out / tag / "scores.npz")
        infos[tag] = json.loads((out / tag / "attack.json").read_text())
        for r in scores:
            scores[r][picks[tag]] = part[r]
    covered = ~np.isnan(scores["wb_calibrated"])
    member, sites = member[covered], sites[covered]
    scores = {k: v[covered] for k, v in scores.items()}
    save_audit_scores(out / WHITEBOX_SCORES, scores, member, sites)
    attacks = score_rungs(scores, member, sites, result, cfg)
    tables = [i.get("selection") or {} for i in infos.values()]
    if all(tables):
        mean = {r: float(np.mean([t[r] for t in tables])) for r in WB_RUNGS}
        best = max(sorted(mean), key=mean.get)
        order = sorted(mean, key=mean.get, reverse=True)
        how = "shadow AUC " + ", ".join(f"{r} {mean[r]:.3f}" for r in order)
    else:
        best, how = "wb_calibrated", "fixed (one shadow)"
    top = attacks[best]
    return {
        "attack": best,
        "selected_on": how,
        "auc": top["auc"],
        "auc_ci95": top["auc_ci95"],
        "tpr_at_1pct_fpr": top["tpr_at_1pct_fpr"],
        "tpr_at_10pct_fpr": top["tpr_at_10pct_fpr"],
        "tpr": top["tpr"],
        "attacks": attacks,
        "n_members": int(member.sum()),
        "n_nonmembers": int((~member).sum()),
        "attacker_wall_s": time.perf_counter() - t0,
        "per_target": {t: {k: i.get(k) for k in ("selection", "wall_s")} for t, i in infos.items()},
    }
