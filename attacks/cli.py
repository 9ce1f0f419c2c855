"""`fedonco attack`: the black-box membership-inference attacker.

It knows the public training recipe (the config) and owns a pool of synthetic slices from the
public generator with another seed (the dataset's ``attacker`` split). It never reads training
data or weights: its only access to the target is ``Predict`` on the release service. It scores
every candidate slice (higher = more likely a member) with every rung of the attack ladder.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from attacks.options import AttackOptions
from attacks.remote import RemoteModel
from common.config import load_config
from common.data.loader import load_arrays
from common.io import load_npz

log = logging.getLogger(__name__)


def load_candidates(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Candidate slices, masks and (optional) the site each came from — never membership
    labels — from a plain .npz (no pickle)."""
    z = load_npz(path)
    missing = {"images", "masks"} - set(z)
    if missing:
        raise ValueError(
            f"{path}: candidates need arrays 'images' and 'masks' (missing {sorted(missing)})"
        )
    if "is_member" in z:
        raise ValueError(f"{path}: candidates must not carry membership labels")
    images, masks, sites = z["images"], z["masks"], z.get("sites")
    if images.ndim != 3 or images.shape != masks.shape:
        raise ValueError(
            f"{path}: images and masks must both be (N, H, W), got {images.shape}, {masks.shape}"
        )
    if sites is not None and sites.shape != (len(images),):
        raise ValueError(f"{path}: 'sites' must give one site per candidate")
    return images, masks, sites


def run_attack_cmd(args: AttackOptions) -> int:
    """Score each target's candidates: ``--model``, ``--candidates`` and ``--out`` are given once
    per target, in the same order. The shadow models depend only on the public recipe, the pool
    and the seed, so one set serves every target (FedBN: each site's released model). With
    ``--auditor N`` the auditor's online rungs run too (they need the candidates' sites)."""
    from attacks.ladder import run_ladder, train_shadows

    models, candidates, outs = args.model or [""], args.candidates, args.out
    sites = args.site or [None] * len(models)
    if not (len(models) == len(candidates) == len(outs) == len(sites)):
        raise ValueError(
            f"give --model, --candidates, --out (and --site, if any) once per target, in the same "
            f"order (got {len(models)}, {len(candidates)}, {len(outs)} and {len(sites)})"
        )
    from common.config import with_device
    from common.device import device_record, resolve_device

    cfg = with_device(load_config(args.config), args.device)
    device = resolve_device(cfg.train.device)  # one line, before anything starts, if no CUDA
    n_shadows = args.shadows or cfg.mia.n_shadows
    n_auditor = cfg.mia.auditor_shadows if args.auditor is None else args.auditor
    budget = args.query_budget or cfg.mia.query_budget
    t0 = time.perf_counter()
    tls_dir = Path(args.tls_dir) if args.tls_dir else None
    wait = args.connect_timeout
    targets = [
        RemoteModel(args.target, name, tls_dir=tls_dir, connect_timeout=wait) for name in models
    ]
    methods = {t.method for t in targets}
    if len(methods) != 1:
        raise ValueError(f"the targets were trained with different methods {sorted(methods)}")
    pool_images, pool_masks, _, pool_sites = load_arrays(args.pool, "attacker")
    if len(pool_images) == 0:
        raise ValueError(f"{args.pool}: no attacker split to train shadow models on")
    jobs = [load_candidates(Path(c)) for c in candidates]  # every input checked before training
    if n_auditor and any(s is None for _i, _m, s in jobs):
        raise ValueError("the auditor's mode needs each candidate's site ('sites' in the .npz)")
    t_shadows = time.perf_counter()
    shadows = train_shadows(
        cfg,
        targets[0].method,
        pool_images,
        pool_masks,
        n_shadows,
        args.seed,
        pool_sites,
        device=device,
    )
    # the shadows' wall time, shared by every target of this attack (each attack.json says it)
    timing = {"shadow_train_s": time.perf_counter() - t_shadows}
    if n_auditor:  # one set for every target: each candidate is IN for half of them
        from attacks.auditor import run_auditor, train_auditor_shadows

        union = tuple(np.concatenate([job[k] for job in jobs]) for k in range(3))
        t_aud = time.perf_counter()
        auditor = train_auditor_shadows(
            cfg,
            targets[0].method,
            (pool_images, pool_masks, pool_sites),
            union,
            n_auditor,
            args.seed,
            device,
        )
        timing["auditor_shadow_train_s"] = time.perf_counter() - t_aud
        ends = np.cumsum([len(job[0]) for job in jobs])
        inside = np.stack([sh.extra_member for sh in auditor])
        inside_per_job = np.split(inside, ends[:-1], axis=1)
    for j, (target, (cand_images, cand_masks, _), out, site) in enumerate(
        zip(targets, jobs, outs, sites, strict=True)
    ):
        t1, queries = time.perf_counter(), {"n": 0}

        def predict(images, target=target, queries=queries):
            queries["n"] += len(images)
            return target.predict(images)

        ladder = run_ladder(
            predict,
            cfg,
            target.method,
            (pool_images, pool_masks),
            (cand_images, cand_masks),
            seed=args.seed,
            shadows=shadows,
            site=site,
            query_budget=budget,
        )
        scores, info = dict(ladder.scores), {"ladder": ladder.info}
        if n_auditor:
            aud = run_auditor(
                predict,
                cfg,
                (pool_images, pool_masks),
                (cand_images, cand_masks),
                auditor,
                inside_per_job[j],
                seed=args.seed,
                site=site,
                query_budget=budget,
            )
            scores.update(aud.scores)
            info["auditor"] = aud.info
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        np.savez(out / "scores.npz", **{k: np.asarray(v, np.float64) for k, v in scores.items()})
        info.update(
            {
                "attacks": sorted(scores),
                "method": target.method,
                "model": target.model,
                "n_candidates": int(len(cand_images)),
                "n_shadows": n_shadows,
                "site": site,
                "queries": queries["n"],
                "wall_s": time.perf_counter() - t1,
                "shared_timing_s": timing,
                "device": device_record(device),
            }
        )
        (out / "attack.json").write_text(json.dumps(info, indent=1) + "\n")
        log.info(
            "attack on %s %r done: %d candidates, %d queries",
            args.target,
            target.model,
            info["n_candidates"],
            queries["n"],
        )
    log.info("%d target(s) attacked in %.1fs", len(targets), time.perf_counter() - t0)
    return 0


def run_whitebox_cmd(args) -> int:
    """`fedonco attack-whitebox`: score each target's candidates from its released weights
    (``attacks.whitebox``); ``--release``, ``--candidates`` and ``--out`` once per target, in
    the same order. The shadows are the black-box attacker's (same recipe, pool, seed)."""
    from attacks.shadows import train_shadows
    from attacks.whitebox import run_whitebox
    from common.config import with_device
    from common.device import device_record, resolve_device
    from common.release import load_release

    releases, candidates, outs = args.release, args.candidates, args.out
    sites = args.site or [None] * len(releases)
    if not (len(releases) == len(candidates) == len(outs) == len(sites)):
        raise ValueError(
            f"give --release, --candidates, --out (and --site, if any) once per target, in the "
            f"same order (got {len(releases)}, {len(candidates)}, {len(outs)} and {len(sites)})"
        )
    cfg = with_device(load_config(args.config), args.device)
    device = resolve_device(cfg.train.device)
    targets = [load_release(Path(r), device) for r in releases]
    methods = {info["method"] for _m, info in targets}
    if len(methods) != 1:
        raise ValueError(f"the targets were trained with different methods {sorted(methods)}")
    method = methods.pop()
    pool_images, pool_masks, _, pool_sites = load_arrays(args.pool, "attacker")
    if len(pool_images) == 0:
        raise ValueError(f"{args.pool}: no attacker split to train shadow models on")
    jobs = [load_candidates(Path(c)) for c in candidates]
    n_shadows = args.shadows or cfg.mia.n_shadows
    t0 = time.perf_counter()
    shadows = train_shadows(
        cfg, method, pool_images, pool_masks, n_shadows, args.seed, pool_sites, device=device
    )
    shadow_s = time.perf_counter() - t0
    members = np.stack([sh.member_mask for sh in shadows])
    window = tuple(cfg.data.window)
    for (model, info), (cand_images, cand_masks, _), out, site in zip(
        targets, jobs, outs, sites, strict=True
    ):
        t1 = time.perf_counter()
        refs = [sh.site_models.get(site, sh.model) if site else sh.model for sh in shadows]
        result = run_whitebox(
            model, refs, members, (pool_images, pool_masks), (cand_images, cand_masks), window
        )
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        np.savez(out / "scores.npz", **result.scores)
        record = {
            **result.info,
            "attacks": sorted(result.scores),
            "method": method,
            "release": info.get("site") or "global",
            "n_candidates": int(len(cand_images)),
            "site": site,
            "wall_s": time.perf_counter() - t1,
            "shared_timing_s": {"shadow_train_s": shadow_s},
            "device": device_record(device),
        }
        (out / "attack.json").write_text(json.dumps(record, indent=1) + "\n")
        log.info(
            "white-box attack on %s done: %d candidates; strongest on shadow data: %s",
            info.get("site") or "the global release",
            len(cand_images),
            result.info["strongest"],
        )
    return 0


def run_inversion_cmd(args) -> int:
    """`fedonco attack-inversion`: reconstruct training slices from what the server holds for
    one round (``attacks.inversion``). The view directory holds view.json ({"method", "kind":
    "update" | "mean" | "noisy-gradient-sum"}), sent.npz and held.npz; only weights and numbers
    are read (plain .npz, no pickle)."""
    from dataclasses import replace

    from attacks.inversion import InversionSettings, invert
    from common.model import model_for, set_params

    view = Path(args.view)
    meta = json.loads((view / "view.json").read_text())
    kind = meta.get("kind")
    if kind not in ("update", "mean", "noisy-gradient-sum"):
        raise ValueError(f"{view}/view.json: unknown kind {kind!r}")
    cfg = load_config(args.config)
    model = model_for(cfg, meta["method"])
    sent, held = load_npz(view / "sent.npz"), load_npz(view / "held.npz")
    set_params(model, sent, strict=False)
    names = [n for n, _ in model.named_parameters()]
    missing = [n for n in names if n not in held or n not in sent]
    if missing:
        raise ValueError(f"{view}: the view lacks parameters {missing[:3]}")
    if kind == "noisy-gradient-sum":  # already a gradient
        direction = {n: np.asarray(held[n], np.float32) for n in names}
    else:  # a weight update: minus the step the site(s) took
        direction = {n: np.asarray(sent[n], np.float32) - held[n] for n in names}
    settings = InversionSettings(n_images=args.images, seed=args.seed)
    if args.steps:
        settings = replace(settings, steps=args.steps)
    if args.restarts:
        settings = replace(settings, restarts=args.restarts)
    t0 = time.perf_counter()
    inv = invert(model, direction, cfg.data.image_size, settings)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "reconstruction.npz", images=inv.images, masks=inv.masks)
    record = {
        "kind": kind,
        "method": meta["method"],
        "cosine": inv.cosine,
        "per_restart": inv.per_restart,
        "settings": vars(settings) if hasattr(settings, "__dict__") else str(settings),
        "wall_s": time.perf_counter() - t0,
    }
    (out / "attack.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    log.info("inversion of %s (%s): gradient cosine %.4f", view.name, kind, inv.cosine)
    return 0
