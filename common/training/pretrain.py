"""Public pretraining: the initial weights of a method marked ``pretrained`` (``dpsgd-pt``).

The public pool is ``pretrain.public_size`` procedural slices drawn with the public seed
(``Config.public_seed``, never the benchmark's or the attacker's) from one declared public
scanner, the reference profile of ``common/data/sites.py`` (380 mm FOV, mid dose and kernel, a
uniform tumour-size mix): a public dataset that resembles the sites without being any of them.
No member slice is in it, so pretraining costs no privacy budget; the recipe is public, so the
server and the attacker derive bit-identical weights from the config (CPU, same machine).

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
from common.model import get_params, model_for, set_params
from common.transforms import to_inputs

log = logging.getLogger(__name__)

PUBLIC_SITE_INDEX = 5  # the public scanner's stream (sites A-E are 0-4)
CACHE_ENV = "FEDONCO_CACHE_DIR"


def public_pool(cfg) -> tuple[np.ndarray, np.ndarray]:
    """(images int16 HU, masks uint8) of the public pool, (N, H, W) each."""
    n, size = cfg.pretrain.public_size, cfg.data.image_size
    slices = [
        render_slice(
            cfg.public_seed, PUBLIC_SITE_INDEX, "train", i, REFERENCE, size, cfg.data.noise_ref_hu
        )
        for i in range(n)
    ]
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


def pretrain(cfg, method: str, device: torch.device | None = None) -> dict[str, np.ndarray]:
    """Train ``model_for(cfg, method)`` centrally on the public pool, on ``device`` (default
    CPU); its float parameters (CPU numpy)."""
    from torch.utils.data import DataLoader, TensorDataset

    from common.training.local import train_local

    p = cfg.pretrain
    start = time.perf_counter()
    images, masks = public_pool(cfg)
    x = to_inputs(images, tuple(cfg.data.window))
    y = torch.from_numpy(masks.astype(np.float32)).unsqueeze(1)
    model = model_for(cfg, method).to(device or "cpu")
    loader = DataLoader(TensorDataset(x, y), batch_size=p.batch_size, shuffle=True)
    metrics = train_local(
        model, loader, epochs=p.epochs, lr=p.lr, seed=cfg.public_seed, optimizer=cfg.train.optimizer
    )
    log.info(
        "public pretraining (%s): %d slices, %d epochs, loss %.4f, %.1fs",
        method,
        len(x),
        p.epochs,
        metrics["loss"],
        time.perf_counter() - start,
    )
    return get_params(model)


def pretrained_params(
    cfg, method: str, device: torch.device | None = None
) -> dict[str, np.ndarray]:
    """The public pretrained weights for ``method`` (from the cache when one is set and holds
    them; otherwise trained on ``device``, and cached)."""
    device = torch.device(device or "cpu")
    cache = os.environ.get(CACHE_ENV)
    path = Path(cache) / f"pretrained-{_key(cfg, method, device)}.npz" if cache else None
    if path is not None and path.is_file():
        log.info("public pretraining: cached weights %s", path)
        return load_npz(path)
    params = pretrain(cfg, method, device)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_npz(path, params)
    return params


def initial_model(cfg, method: str, device: torch.device | None = None) -> nn.Module:
    """The model every run of ``method`` starts from, on ``device`` (default CPU): ``model_for``
    (seeded random weights, drawn on the CPU), or for a ``pretrained`` method those weights after
    public pretraining."""
    model = model_for(cfg, method).to(device or "cpu")
    if get_method(method).pretrained:
        set_params(model, pretrained_params(cfg, method, device))
    return model
