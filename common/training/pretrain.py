"""Public pretraining: the initial weights of a method marked ``pretrained`` (``dpsgd-pt``).

The public pool is ``pretrain.public_size`` procedural slices drawn with the public seed
(``Config.public_seed``, never the benchmark's or the attacker's) from one declared public
scanner, the reference profile of ``common/data/sites.py`` (380 mm FOV, mid dose and kernel, a
uniform tumour-size mix): a public dataset that resembles the sites without being any of them.
No member slice is in it, so pretraining costs no privacy budget; the recipe is public, so the
server and the attacker derive bit-identical weights from the config (CPU, same machine).

A pretrained model is checked on the public scanner's holdout split (``pretrain.holdout_size``
slices, public too): a U-Net can settle in the basin where it predicts no tumour anywhere (BCE
low, soft Dice 1 on empty slices), and a DP row fine-tuned from it measures nothing about DP (the
standard profile's seed 43 did: public Dice 0.000 after 10 epochs, and 0.000 after DP
fine-tuning). Below ``pretrain.min_dice`` the pretraining is done again from another public init
and shuffle (attempt k: model seed ``seed + k * RETRY_SEED_STRIDE``, shuffle seed
``public_seed + k``), at most ``pretrain.attempts`` times; attempt 0 is the recipe as it always
was, so a model that did not collapse keeps its weights bit for bit. What each attempt measured
is the run's record (results.json: the method's ``pretraining``).

``FEDONCO_CACHE_DIR`` (a deployment fact: where to keep computed weights) lets the processes of
one benchmark run share the result instead of each pretraining again; the file name is the hash
of everything the weights depend on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.data.generate import render_slice
from common.data.sites import REFERENCE
from common.io import load_npz, save_npz
from common.methods import get_method
from common.metrics import segmentation_metrics
from common.model import get_params, model_for, set_params
from common.transforms import predict_probs, to_inputs

log = logging.getLogger(__name__)

PUBLIC_SITE_INDEX = 5  # the public scanner's stream (sites A-E are 0-4)
CACHE_ENV = "FEDONCO_CACHE_DIR"
RETRY_SEED_STRIDE = 1_000_003  # attempt k's model seed: seed + k * this


class PretrainingCollapsed(ValueError):
    """Every attempt at public pretraining ended below ``pretrain.min_dice`` on the public
    holdout: the config's recipe does not learn (a ValueError: ``fedonco`` says it in one line)."""


def public_pool(cfg, split: str = "train", n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images int16 HU, masks uint8) of the public pool, (N, H, W) each: ``split`` "train" (the
    ``pretrain.public_size`` slices it trains on) or "holdout" (what the model is checked on)."""
    n = cfg.pretrain.public_size if n is None else n
    slices = [
        render_slice(
            cfg.public_seed,
            PUBLIC_SITE_INDEX,
            split,
            i,
            REFERENCE,
            cfg.data.image_size,
            cfg.data.noise_ref_hu,
        )
        for i in range(n)
    ]
    if not slices:
        size = cfg.data.image_size
        return np.zeros((0, size, size), np.int16), np.zeros((0, size, size), np.uint8)
    return np.stack([s.image for s in slices]), np.stack([s.mask for s in slices])


def _key(cfg, method: str, device: torch.device | None = None) -> str:
    model = model_for(cfg, method)
    facts = {
        "pretrain": cfg.pretrain.model_dump(),
        "public_seed": cfg.public_seed,
        "model": cfg.model.model_dump(),
        "norm": type(model.enc1[1]).__name__,
        "seed": cfg.seed,
        "data": {k: getattr(cfg.data, k) for k in ("image_size", "window", "noise_ref_hu")},
        "optimizer": cfg.train.optimizer,
        "torch": torch.__version__,
        "device": torch.device(device or "cpu").type,  # CUDA gives other weights than the CPU
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _public_dice(model: nn.Module, holdout: tuple[torch.Tensor, np.ndarray]) -> float | None:
    """Mean Dice over the holdout's tumour slices; None without any (nothing to judge)."""
    x, masks = holdout
    dice = segmentation_metrics(predict_probs(model, x), masks[:, None])["dice"]
    return None if np.isnan(dice) else float(dice)


def pretrain(cfg, method: str, device: torch.device | None = None) -> tuple[dict, dict]:
    """Train ``model_for(cfg, method)`` centrally on the public pool, on ``device`` (default
    CPU), checked on the public holdout and trained again from another init where it collapsed
    (module docstring): (its float parameters as CPU numpy, the record of the attempts)."""
    from torch.utils.data import DataLoader, TensorDataset

    from common.training.local import train_local

    p = cfg.pretrain
    images, masks = public_pool(cfg)
    x = to_inputs(images, tuple(cfg.data.window))
    y = torch.from_numpy(masks.astype(np.float32)).unsqueeze(1)
    h_images, h_masks = public_pool(cfg, "holdout", p.holdout_size)
    holdout = (to_inputs(h_images, tuple(cfg.data.window)), h_masks)
    record: dict = {"holdout_slices": p.holdout_size, "min_dice": p.min_dice, "attempts": []}
    for k in range(p.attempts):
        start = time.perf_counter()
        model_seed, shuffle_seed = cfg.seed + k * RETRY_SEED_STRIDE, cfg.public_seed + k
        model = model_for(cfg.model_copy(update={"seed": model_seed}), method).to(device or "cpu")
        loader = DataLoader(TensorDataset(x, y), batch_size=p.batch_size, shuffle=True)
        metrics = train_local(
            model,
            loader,
            epochs=p.epochs,
            lr=p.lr,
            seed=shuffle_seed,
            optimizer=cfg.train.optimizer,
        )
        dice = _public_dice(model, holdout) if p.holdout_size else None
        record["attempts"].append(
            {"model_seed": model_seed, "shuffle_seed": shuffle_seed, "public_holdout_dice": dice}
        )
        log.info(
            "public pretraining (%s) attempt %d: %d slices, %d epochs, loss %.4f, Dice on %d "
            "public holdout slices %s, %.1fs",
            method,
            k + 1,
            len(x),
            p.epochs,
            metrics["loss"],
            p.holdout_size,
            "-" if dice is None else f"{dice:.3f}",
            time.perf_counter() - start,
        )
        if dice is None or dice >= p.min_dice:
            return get_params(model), record
        log.warning(
            "public pretraining (%s) collapsed: Dice %.3f < pretrain.min_dice %.3f on the public "
            "holdout%s",
            method,
            dice,
            p.min_dice,
            "; trying another public init" if k + 1 < p.attempts else "",
        )
    raise PretrainingCollapsed(
        f"{method}: public pretraining collapsed in all {p.attempts} attempts (Dice on "
        f"{p.holdout_size} public holdout slices "
        f"{[round(a['public_holdout_dice'], 3) for a in record['attempts']]} < pretrain.min_dice "
        f"{p.min_dice}): raise pretrain.epochs or pretrain.public_size, or pretrain.attempts"
    )


def pretrained(cfg, method: str, device: torch.device | None = None) -> tuple[dict, dict]:
    """The public pretrained weights for ``method`` and the record of how they were made (from
    the cache when one is set and holds them; otherwise trained on ``device``, and cached)."""
    device = torch.device(device or "cpu")
    cache = os.environ.get(CACHE_ENV)
    path = Path(cache) / f"pretrained-{_key(cfg, method, device)}.npz" if cache else None
    if path is not None and path.is_file() and path.with_suffix(".json").is_file():
        log.info("public pretraining: cached weights %s", path)
        return load_npz(path), json.loads(path.with_suffix(".json").read_text())
    params, record = pretrain(cfg, method, device)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_npz(path, params)
        path.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    return params, record


def pretrained_params(
    cfg, method: str, device: torch.device | None = None
) -> dict[str, np.ndarray]:
    """The public pretrained weights for ``method`` (``pretrained`` without the record)."""
    return pretrained(cfg, method, device)[0]


def initial_model(cfg, method: str, device: torch.device | None = None) -> nn.Module:
    """The model every run of ``method`` starts from, on ``device`` (default CPU): ``model_for``
    (seeded random weights, drawn on the CPU), or for a ``pretrained`` method those weights after
    public pretraining."""
    model = model_for(cfg, method).to(device or "cpu")
    if get_method(method).pretrained:
        set_params(model, pretrained_params(cfg, method, device))
    return model
