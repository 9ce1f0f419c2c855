"""The volumetric study (open question 3): a 3D U-Net on synthetic volumes against the 2D U-Net on
the same patients' slices, for utility and for patient-level membership leakage.

    fedonco study volumetric --config configs/volumetric.toml --seeds 3 --out runs/studies

Data: every site's patients are volumes (``common.data.volume``: ``volume.depth`` axial slices of
``data.image_size`` pixels, 3D lesions in every patient), ``volume.train_per_site`` members,
``volume.holdout_per_site`` non-members and ``volume.test_per_site`` test patients per site, and
an attacker's pool of ``volume.attacker_patients`` drawn from the same five scanners.

Arms (one FedAvg federation each, the profile's rounds, epochs and lr, the same patients):

- ``slices2d``: the 2D U-Net trained on the members' axial slices (batch ``train.batch_size``
  slices);
- ``volumes3d``: the 3D U-Net (3x3x3 convolutions) trained on the members' volumes, in batches
  of ``train.batch_size // volume.depth`` volumes (at least one): as many voxels per step and as
  many steps per epoch as the 2D arm.

The federations run in process through ``common.fl.simulate.simulate_federation``, whose rounds
are those of the real server and sites (bit for bit for the 2D methods,
``tests/integration/test_federation.py -k simulator``); the 3D model has not been through the
gRPC engine (its sites would need a volume store): ``--engine ray`` is refused.

Utility: the Dice of each test volume (the 2D model's slice predictions stacked), its mean per
site and overall, and after every round (the curve). Leakage, at patient level for both models
(the unit a hospital protects): each candidate patient's signal is minus its segmentation loss
(the 3D model: of the volume; the 2D model: the mean over the patient's slices); two rungs,
the loss itself and offline LiRA against ``volume.n_shadows`` shadow federations trained the
same way on halves of the attacker's pool; the rung is chosen on the shadows (each shadow the
target of the others, as the black-box ladder chooses), never on the target's labels. The
audit's AUC has a bootstrap 95% CI and TPR at 1% FPR an exact one (``bench.audit_metrics``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

METHOD = "fedavg"
ARMS = (
    ("slices2d", "2D U-Net on the volumes' axial slices", 2),
    ("volumes3d", "3D U-Net on the volumes", 3),
)


# -- data -----------------------------------------------------------------------------------------


def make_cohort(cfg) -> dict:
    """{split: {site: (images int16 (n, D, N, N), masks uint8 (n, D, N, N))}} for the sites'
    train/holdout/test patients, and {"attacker": {"pool": ...}} for the attacker's pool (drawn
    from the sites' scanners in turn)."""
    from common.data.sites import resolve_sites
    from common.data.volume import render_volume

    specs = resolve_sites(cfg.data, cfg.sites)
    v = cfg.volume

    def render(site_index: int, split: str, index: int):
        spec = specs[site_index]
        vol = render_volume(
            cfg.seed,
            site_index,
            split,
            index,
            spec,
            cfg.data.image_size,
            v.depth,
            v.slice_mm,
            cfg.data.noise_ref_hu,
        )
        return vol.image, vol.mask

    def stack(items):
        return np.stack([i for i, _ in items]), np.stack([m for _, m in items])

    counts = {"train": v.train_per_site, "holdout": v.holdout_per_site, "test": v.test_per_site}
    cohort: dict = {}
    for split, n in counts.items():
        cohort[split] = {
            spec.name: stack([render(k, split, i) for i in range(n)])
            for k, spec in enumerate(specs)
        }
    pool = [render(i % len(specs), "attacker", i) for i in range(v.attacker_patients)]
    cohort["attacker"] = {"pool": stack(pool)}
    return cohort


class PatientSet(torch.utils.data.Dataset):
    """Windowed model inputs of patients: whole volumes ((1, D, N, N) items, ``dims`` 3) or their
    axial slices ((1, N, N) items, ``dims`` 2)."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, window, dims: int) -> None:
        self.x = _inputs(images, window, dims)
        self.y = _inputs(masks.astype(np.float32), None, dims)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def arm_config(cfg, dims: int):
    """The arm's config: FedAvg, the 2D or 3D U-Net, and (3D) volumes per batch."""
    from common.config import with_overrides

    batch = cfg.train.batch_size if dims == 2 else max(1, cfg.train.batch_size // cfg.volume.depth)
    return with_overrides(
        cfg, **{"model.dims": dims, "train.batch_size": batch, "fl.methods": [METHOD]}
    )


# -- measuring ------------------------------------------------------------------------------------


def _inputs(volumes: np.ndarray, window, dims: int) -> torch.Tensor:
    """(n, D, N, N) volumes as model inputs: windowed HU (``window``; None: as they are), one
    (1, D, N, N) item per volume (3D) or one (1, N, N) item per slice (2D)."""
    from common.transforms import window_hu

    x = torch.from_numpy(volumes if window is None else window_hu(volumes, window))
    return (x if dims == 3 else x.reshape(-1, *x.shape[2:])).unsqueeze(1)


def predict_volumes(model, images: np.ndarray, cfg, dims: int) -> np.ndarray:
    """Tumour probabilities (n, D, N, N) of patients' volumes: the 3D model on each volume, the
    2D model on each slice, stacked back into the volume."""
    from common.transforms import predict_probs

    batch = 2 if dims == 3 else cfg.train.eval_batch_size
    with torch.no_grad():
        probs = predict_probs(model, _inputs(images, cfg.data.window, dims), batch)
    return probs.reshape(images.shape)


def volume_dice(probs: np.ndarray, masks: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Dice of each volume (every study volume has a lesion)."""
    pred = probs.reshape(len(probs), -1) >= threshold
    true = masks.reshape(len(masks), -1) > 0
    inter = (pred & true).sum(1)
    denom = pred.sum(1) + true.sum(1)
    return np.where(denom > 0, 2.0 * inter / np.maximum(denom, 1), 1.0)


def patient_signal(model, images: np.ndarray, masks: np.ndarray, cfg, dims: int) -> np.ndarray:
    """Minus each patient's segmentation loss (higher: more member-like): the volume's loss
    (3D) or the mean of its slices' losses (2D)."""
    from common.metrics import seg_loss

    x = _inputs(images, cfg.data.window, dims)
    y = _inputs(masks.astype(np.float32), None, dims)
    was = model.training
    model.eval()
    losses = []
    step = 2 if dims == 3 else cfg.train.eval_batch_size
    with torch.no_grad():
        for i in range(0, len(x), step):
            losses.append(seg_loss(model(x[i : i + step]), y[i : i + step], reduction="none"))
    model.train(was)
    per = torch.cat(losses).numpy().astype(np.float64)
    return -(per if dims == 3 else per.reshape(len(images), -1).mean(1))


def federate(cfg, dims: int, members: dict, seed: int, test=None):
    """One FedAvg federation of the arm over ``members`` (site -> (images, masks)); with
    ``test`` (site -> (images, masks)) also the mean test Dice after every round."""
    from common.fl.simulate import simulate_federation
    from common.model import model_for, set_params

    acfg = arm_config(cfg, dims)
    sites = {s: PatientSet(i, m, cfg.data.window, dims) for s, (i, m) in members.items()}
    curve: list[float] = []

    def dice_of(model) -> float:
        return float(
            np.mean(
                [
                    volume_dice(predict_volumes(model, i, cfg, dims), m).mean()
                    for i, m in test.values()
                ]
            )
        )

    def observe(view) -> None:  # the model sent in round r is the global model after round r-1
        if view.rnd > 1:
            model = model_for(acfg, METHOD)
            set_params(model, view.sent, strict=False)
            curve.append(dice_of(model))

    fed = simulate_federation(
        acfg, METHOD, sites, seed=seed, observe=observe if test is not None else None
    )
    model = fed.model(acfg, METHOD)
    if test is not None:
        curve.append(dice_of(model))
    return model, curve


def _split_pool(pool, n: int, sites: list[str], k: int, seed: int):
    """Shadow k's members: ``n`` patients of the pool (a random half when the pool is twice as
    large), dealt to the sites in turn; and which pool patients they are."""
    images, masks = pool
    rng = np.random.default_rng([seed, k, 7])
    pick = np.sort(rng.choice(len(images), size=n, replace=False))
    per = {s: pick[i :: len(sites)] for i, s in enumerate(sites)}
    inside = np.zeros(len(images), bool)
    inside[pick] = True
    return {s: (images[idx], masks[idx]) for s, idx in per.items()}, inside


def audit(cfg, dims: int, target, cohort: dict, seed: int, sites: list[str]) -> dict:
    """The patient-level audit of ``target``: the rung (loss or offline LiRA) chosen on the
    shadow federations, then scored on the members against the non-members."""
    from attacks.calibrated import lira_offline
    from bench.audit_metrics import audit_metrics, rank_auc

    v = cfg.volume
    pool = cohort["attacker"]["pool"]
    n_members = v.train_per_site * len(sites)
    if len(pool[0]) < 2 * n_members:
        raise ValueError(
            f"volume.attacker_patients ({len(pool[0])}) must be at least twice the members of a "
            f"federation ({n_members}): each shadow federation, as large as the target, trains "
            "on a random half of the pool"
        )
    shadows, inside = [], []
    for k in range(v.n_shadows):
        members, ins = _split_pool(pool, n_members, sites, k, seed)
        shadows.append(federate(cfg, dims, members, seed * 1000 + 101 + k)[0])
        inside.append(ins)
    pool_sig = np.stack([patient_signal(m, *pool, cfg, dims) for m in shadows])  # (S, pool)

    def rungs(target_sig, reference):
        out = {"loss": target_sig}
        if len(reference):
            out["lira"] = lira_offline(target_sig, reference)
        return out

    chosen_on: dict[str, list[float]] = {}
    for k in range(len(shadows)):  # shadow k plays the target, the others the references
        others = [j for j in range(len(shadows)) if j != k]
        # candidates: pool patients no reference trained on (offline LiRA's references are OUT
        # for every candidate, as for the target's); members are shadow k's
        use = (
            ~np.any([inside[j] for j in others], axis=0) if others else np.ones(len(pool[0]), bool)
        )
        labels = inside[k][use]
        if labels.all() or not labels.any():
            continue
        for name, s in rungs(pool_sig[k][use], pool_sig[others][:, use]).items():
            chosen_on.setdefault(name, []).append(rank_auc(s, labels))
    on_shadows = {name: float(np.mean(a)) for name, a in chosen_on.items()}
    best = max(on_shadows, key=lambda n: (on_shadows[n], n == "loss")) if on_shadows else "loss"

    imgs = [cohort["train"][s] for s in sites] + [cohort["holdout"][s] for s in sites]
    images = np.concatenate([i for i, _ in imgs])
    masks = np.concatenate([m for _, m in imgs])
    y = np.r_[np.ones(n_members, bool), np.zeros(len(images) - n_members, bool)]
    target_sig = patient_signal(target, images, masks, cfg, dims)
    ref = np.stack([patient_signal(m, images, masks, cfg, dims) for m in shadows])
    scores = rungs(target_sig, ref)
    got = audit_metrics(scores[best], y, seed=seed)
    return {
        "attack": best,
        "selected_on": "shadows",
        "on_shadows": on_shadows,
        "all": {n: rank_auc(s, y) for n, s in scores.items()},
        **{k: got[k] for k in ("auc", "auc_ci95", "tpr_at_1pct_fpr", "n_members", "n_nonmembers")},
    }


def run_seed(cfg, cohort: dict, dims: int, seed: int) -> dict:
    """One arm at one seed: the study's cell (Dice, per-site Dice, the audit, the curve)."""
    sites = [s.name for s in cfg.sites]
    t0 = time.perf_counter()
    model, curve = federate(cfg, dims, cohort["train"], seed, cohort["test"])
    dice = {
        s: volume_dice(
            predict_volumes(model, cohort["test"][s][0], cfg, dims), cohort["test"][s][1]
        )
        for s in sites
    }
    per_site = [float(dice[s].mean()) for s in sites]
    all_dice = np.concatenate([dice[s] for s in sites])
    t1 = time.perf_counter()
    mia = audit(cfg, dims, model, cohort, seed, sites)
    from common.model import count_parameters

    return {
        "dice": float(all_dice.mean()),
        "dice_per_site": per_site,
        "epsilon": None,
        "auc": mia["auc"],
        "auc_ci95": mia["auc_ci95"],
        "tpr_at_1pct_fpr": mia["tpr_at_1pct_fpr"],
        "attack": mia["attack"],
        "mia": mia,
        "curve": curve,
        "n_params": count_parameters(model),
        "train_s": t1 - t0,
        "audit_s": time.perf_counter() - t1,
    }


def run_volumetric(study, cfg, seeds: int, out: Path) -> dict:
    """Every arm at ``seeds`` seeds (cfg.seed, cfg.seed + 1, ...) into ``out``: the study's
    summary (the format of ``bench.study.collect``), also written to ``out/study.json``."""
    from common.config import with_overrides
    from common.progress import progress

    arms = {
        name: {"label": label, "overrides": {"model.dims": dims}, "wall_s": 0.0, "seeds": {}}
        for name, label, dims in ARMS
    }
    bar = progress(seeds * len(ARMS), "volumetric study", "cell")
    try:
        for k in range(seeds):
            scfg = with_overrides(cfg, seed=cfg.seed + k)
            t0 = time.perf_counter()
            cohort = make_cohort(scfg)
            data_s = time.perf_counter() - t0
            for name, _label, dims in ARMS:
                t0 = time.perf_counter()
                cell = run_seed(scfg, cohort, dims, scfg.seed)
                arms[name]["seeds"][str(scfg.seed)] = {METHOD: cell}
                arms[name]["wall_s"] += time.perf_counter() - t0 + data_s / len(ARMS)
                log.info(
                    "volumetric %s seed %d: Dice %.3f, %s AUC %.3f",
                    name,
                    scfg.seed,
                    cell["dice"],
                    cell["attack"],
                    cell["auc"],
                )
                bar.update()
    finally:
        bar.close()
    summary = {
        "study": study.name,
        "profile": cfg.profile,
        "question": study.question,
        "methods": [METHOD],
        "sites": [s.name for s in cfg.sites],
        "arms": arms,
        "volume": cfg.volume.model_dump(mode="json"),
        "image_size": cfg.data.image_size,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg.model_dump(mode="json"), indent=1) + "\n")
    (out / "study.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary
