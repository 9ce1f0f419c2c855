"""The attacker's shadow models: shadow federations trained the way the target was.

Each shadow takes a random half of the attacker's pool, splits it into shadow sites by the public
site profile each pool slice was drawn from, and runs the target's method — rounds, local epochs,
batch size, learning rate, optimizer, FedProx's proximal term, DP-SGD per site with its own σ and
accountant, FedBN's local normalisation, the public pretrained start — in one process
(``common.fl.simulate``; no gRPC is needed for a model the attacker owns). A centrally
trained shadow (all of the half as one site, the ladder's first design) is a poor reference for a
federated target: on a 64×64 FedAvg target offline LiRA reached AUC 0.48 with central shadows
and 0.68 with one shadow federation (docs/results.md).

The auditor's mode (``attacks.auditor``) adds known candidate slices to a shadow's sites
(``extra``); the black-box attacker never does.

Shadows depend only on the public recipe, the pool, the seed and the shadow's index, so with
``FEDONCO_CACHE_DIR`` set (the benchmark sets it per run) their weights are kept there and a
second audit with the same recipe (another release of the same method, a re-run audit) loads them
instead of training again. The cache holds weights the attacker computed itself, as plain .npz.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.device import keep_freed_memory
from common.fl.strategy import strategy_for
from common.io import load_npz, save_npz
from common.methods import get_method
from common.model import model_for, set_params
from common.progress import LOG_FORMAT
from common.seeds import shadow_seed
from common.training.pretrain import CACHE_ENV
from common.transforms import predict_hu, to_inputs

log = logging.getLogger(__name__)

QUERY_BATCH = 64  # slices per predict call; the release service enforces its own limit too


@dataclass
class ShadowModel:
    """A shadow federation the attacker owns, and which pool slices it trained on.

    ``model`` is its released global model; ``site_models`` its sites' own models (a method that
    keeps normalisation layers local releases one model per site, and a target released by site
    S is compared with the shadow's site S). ``extra_member``: which of the ``extra`` slices it
    trained on (the auditor's candidates; empty for the attacker's shadows).
    """

    model: nn.Module
    member_mask: np.ndarray  # bool over the attacker pool
    window: tuple[float, float]
    method: str
    metrics: dict = field(default_factory=dict)
    site_models: dict[str, nn.Module] = field(default_factory=dict)
    extra_member: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))

    def predict(
        self, images_hu: np.ndarray, batch: int = QUERY_BATCH, site: str | None = None
    ) -> np.ndarray:
        """Tumor probabilities float32 (N, H, W) for int16 HU slices (same contract as the
        target); ``site``: that site's own model where the shadow has one."""
        model = self.site_models.get(site, self.model) if site is not None else self.model
        model.eval()
        return predict_hu(model, np.asarray(images_hu), self.window, batch)


def dataset(images: np.ndarray, masks: np.ndarray, window: tuple[float, float]):
    """A TensorDataset of (image (1, H, W), mask (1, H, W)) items for the training code."""
    from torch.utils.data import TensorDataset

    x = to_inputs(images, window)
    y = torch.from_numpy(np.asarray(masks, dtype=np.float32)).unsqueeze(1)
    return TensorDataset(x, y)


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _cache_key(
    cfg, method: str, seed: int, index: int, data_digest: str, device: torch.device
) -> str:
    c, m = cfg.for_method(method), get_method(method)
    facts = {  # what training depends on, not the method's name: equal recipes share shadows
        "method": [
            m.strategy,
            m.norm_type(c.model.norm),
            m.dp,
            m.proximal,
            m.release,
            m.pretrained,
            m.kind,
        ],
        "seed": seed,
        "index": index,
        "data": data_digest,
        "recipe": {k: c.model_dump()[k] for k in ("train", "dp", "model", "pretrain")},
        # every setting of the method's strategy (FedProx's pull, FedAdam's server optimizer,
        # site sampling, ...), and secure aggregation's threshold and clip (ddp-sgd's noise
        # shares and ring scale depend on them): a shadow of another setting is never reused
        "fl": strategy_for(c, method).fingerprint(),
        "secagg": c.model_dump()["secagg"],
        "profile": {k: getattr(c.data, k) for k in ("image_size", "window", "noise_ref_hu")},
        "global_seed": c.seed,
        "torch": torch.__version__,
        "device": device.type,  # CUDA kernels train other weights than the CPU's
    }
    blob = json.dumps(facts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def _cached(
    path: Path | None, cfg, method: str, device: torch.device
) -> tuple[nn.Module, dict] | None:
    if path is None or not path.is_file():
        return None
    arrays = load_npz(path)
    groups: dict[str, dict[str, np.ndarray]] = {}
    for key, value in arrays.items():
        group, _, name = key.partition("/")
        groups.setdefault(group, {})[name] = value
    sites = {g.removeprefix("site:"): v for g, v in groups.items() if g != "global"}
    return _models(cfg, method, device, groups["global"], sites)


def _models(
    cfg, method: str, device: torch.device, global_params: dict, site_params: dict
) -> tuple[nn.Module, dict[str, nn.Module]]:
    """The shadow's global model and its sites' own models, on ``device``, from weights."""

    def build(params):
        model = model_for(cfg, method).to(device)
        set_params(model, params)
        return model

    return build(global_params), {s: build(p) for s, p in site_params.items()}


def _store(path: Path | None, global_params: dict, site_params: dict) -> None:
    if path is None:
        return
    arrays = {f"global/{k}": v for k, v in global_params.items()}
    for s, params in site_params.items():
        arrays.update({f"site:{s}/{k}": v for k, v in params.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    save_npz(path, arrays)


def shadow_threads(n_shadows: int, cpus: int | None = None) -> int:
    """Torch threads per shadow federation: the cores split between the shadows (a function of
    the machine and ``n_shadows`` only, so a shadow's weights never depend on how many others
    were cached or trained beside it)."""
    cpus = cpus or os.cpu_count() or 1
    return max(1, cpus // max(1, min(n_shadows, cpus)))


# Below this many sample-steps (slices x rounds x local epochs) a shadow trains in this process:
# starting a worker (importing torch) costs more than it saves.
PARALLEL_MIN_WORK = 2000


def _train_one(job: dict) -> tuple[dict, dict]:
    """One shadow federation (in a worker process, or here): its global and per-site weights."""
    from common.fl.simulate import simulate_method

    if job.get("log_level") is not None:  # a worker: its lines join the parent's stderr
        logging.basicConfig(level=job["log_level"], format=LOG_FORMAT)
        keep_freed_memory()  # a spawned worker does not inherit the parent's malloc settings
    old = torch.get_num_threads()
    if job["device"].type == "cpu":
        torch.set_num_threads(job["threads"])
    try:
        datasets = {s: dataset(im, mk, job["window"]) for s, (im, mk) in job["sites"].items()}
        fed = simulate_method(
            job["cfg"],
            job["method"],
            datasets,
            seed=job["seed"],
            device=job["device"],
            desc=job["desc"],
        )
    finally:
        torch.set_num_threads(old)
    per_site = get_method(job["method"]).release == "per_site"
    return fed.global_params, ({s: fed.site_params[s] for s in datasets} if per_site else {})


def _run_jobs(jobs: list[dict], workers: int):
    """Run the jobs ``workers`` at a time in spawned processes (1: here, one after another);
    yields (job index, result, seconds since they started) as each finishes, in any order."""
    if workers <= 1:
        for i, job in enumerate(jobs):
            t = time.perf_counter()
            yield i, _train_one(job), time.perf_counter() - t
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    level = logging.getLogger().getEffectiveLevel()
    t0 = time.perf_counter()
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        futures = {
            pool.submit(_train_one, {**job, "log_level": level}): i for i, job in enumerate(jobs)
        }
        for fut in as_completed(futures):
            yield futures[fut], fut.result(), time.perf_counter() - t0


def train_shadows(
    cfg,
    method: str,
    pool_images: np.ndarray,
    pool_masks: np.ndarray,
    n_shadows: int,
    seed: int,
    pool_sites: np.ndarray | None = None,
    extra: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    device: torch.device | None = None,
) -> list[ShadowModel]:
    """``n_shadows`` shadow federations, each trained like the target on a random half of the pool.

    The half is split into shadow sites by ``pool_sites``; a reference-row target (``pooled``,
    ``local``) gets the same kind of shadow. Without ``pool_sites`` the half is one site: a
    centrally trained shadow. ``extra`` = (images, masks, sites) of slices that shadow ``i`` adds
    to its sites when ``i`` and the slice's coin agree: shadows 2k and 2k+1 take complementary
    halves, so with an even number of shadows every extra slice is IN for exactly half of them
    (the auditor's online design). ``cfg`` is the public ``common.config.Config``; ``device``:
    where the shadows train and predict (default CPU).

    On the CPU the shadows that are not cached train side by side, one process each, with the
    cores split between them (``shadow_threads``): a small network trains ~1.6x faster on two
    one-thread processes than on one two-thread process. The weights are the same either way.
    """
    pool_images, pool_masks = np.asarray(pool_images), np.asarray(pool_masks)
    if pool_images.ndim != 3 or pool_images.shape != pool_masks.shape:
        raise ValueError(
            f"pool images and masks must be (N, H, W), got {pool_images.shape}, {pool_masks.shape}"
        )
    if n_shadows < 1:
        raise ValueError(f"n_shadows must be >= 1, got {n_shadows}")
    n = len(pool_images)
    if n < 4:
        raise ValueError(f"the attacker pool needs at least 4 slices (2 in, 2 out), got {n}")
    sites = np.full(n, "pool") if pool_sites is None else np.asarray(pool_sites).astype(str)
    if sites.shape != (n,):
        raise ValueError(f"pool_sites must give one site per pool slice, got shape {sites.shape}")
    ex_images, ex_masks, ex_sites = (
        (np.asarray(a) for a in extra)
        if extra is not None
        else (pool_images[:0], pool_masks[:0], sites[:0])
    )
    ex_sites = ex_sites.astype(str)
    if ex_images.shape[1:] != pool_images.shape[1:] or not (
        len(ex_images) == len(ex_masks) == len(ex_sites)
    ):
        raise ValueError("extra slices must be (images, masks, sites) shaped like the pool")
    device = torch.device(device or "cpu")
    coins = np.random.default_rng([seed, 7919]).random(len(ex_images)) < 0.5
    window = tuple(cfg.data.window)
    cache = os.environ.get(CACHE_ENV)
    digest = _digest(
        pool_images, pool_masks, sites.astype("U8"), ex_images, ex_masks, ex_sites.astype("U8")
    )
    all_images = np.concatenate([pool_images, ex_images])
    all_masks = np.concatenate([pool_masks, ex_masks])
    all_sites = np.concatenate([sites, ex_sites])
    threads = shadow_threads(n_shadows)
    plan, ready, jobs = [], {}, []
    for i in range(n_shadows):
        rng = np.random.default_rng([seed, i])
        member = np.zeros(n, bool)
        member[rng.permutation(n)[: n // 2]] = True
        ex_member = coins if i % 2 == 0 else ~coins
        if not len(ex_images):
            ex_member = ex_member[:0]
        take = np.concatenate([member, ex_member])
        keep = sorted({str(s) for s in np.unique(all_sites[take])})
        path = (
            Path(cache) / f"shadow-{_cache_key(cfg, method, seed, i, digest, device)}.npz"
            if cache
            else None
        )
        plan.append((member, ex_member, keep, path))
        hit = _cached(path, cfg, method, device)
        if hit is not None:
            ready[i] = (*hit, 0.0, True)
            log.info(
                "shadow federation %d/%d (%s): cached weights %s", i + 1, n_shadows, method, path
            )
            continue
        sel = {s: take & (all_sites == s) for s in keep}
        jobs.append(
            {
                "index": i,
                "cfg": cfg,
                "method": method,
                "seed": shadow_seed(seed, i),
                "sites": {s: (all_images[m], all_masks[m]) for s, m in sel.items()},
                "slices": int(sum(m.sum() for m in sel.values())),
                "window": window,
                "device": device,
                "threads": threads,
                "desc": f"shadow federation {i + 1}/{n_shadows} ({method})",
            }
        )
    t = cfg.for_method(method).train
    work = sum(j["slices"] for j in jobs) * t.rounds * max(1, t.local_epochs)
    workers = (
        min(len(jobs), n_shadows, os.cpu_count() or 1)
        if device.type == "cpu" and len(jobs) > 1 and work >= PARALLEL_MIN_WORK
        else 1
    )
    for j in jobs:
        log.info(
            "shadow federation %d/%d (%s, %d sites, %d slices): training%s",
            j["index"] + 1,
            n_shadows,
            method,
            len(j["sites"]),
            j["slices"],
            f" ({workers} at once, {threads} thread(s) each)" if workers > 1 else "",
        )
    for k, (glob_params, site_params), elapsed in _run_jobs(jobs, workers):
        i = jobs[k]["index"]
        glob, site_models = _models(cfg, method, device, glob_params, site_params)
        _store(plan[i][3], glob_params, site_params)
        ready[i] = (glob, site_models, elapsed, False)
        log.info(
            "shadow federation %d/%d (%s, %d sites) ready in %.1fs",
            i + 1,
            n_shadows,
            method,
            len(plan[i][2]),
            elapsed,
        )
    shadows = []
    for i, (member, ex_member, keep, _path) in enumerate(plan):
        glob, site_models, elapsed, cached = ready[i]
        metrics = {"shadow_train_s": elapsed, "shadow_sites": len(keep), "cached": cached}
        shadows.append(ShadowModel(glob, member, window, method, metrics, site_models, ex_member))
    return shadows
