"""The release artifact: the final model as the server (or a FedBN site) writes it.

``export_release`` writes ``model.npz`` (weights, no pickle) and ``release.json`` (architecture
and input facts, no data); ``load_release`` reads them back into a model. The Inference service
(``server/inference.py``) serves such a directory; nothing else about a run is in it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from common.io import GROUP_DIR, GROUP_READ, load_npz, save_npz, secure_dir, write_json_atomic
from common.methods import get_method
from common.model import build_model, set_params, state_sha256


def release_info(cfg, method: str, params: dict[str, np.ndarray], site: str | None = None) -> dict:
    """The public description of a released model of ``method`` under ``cfg`` (architecture and
    input facts, the weights' hash; ``site`` for a site's own release)."""
    info = {
        "method": method,
        "base": cfg.model.base,
        "norm": get_method(method).norm_type(cfg.model.norm),
        "groups": cfg.model.groups,
        "image_size": cfg.data.image_size,
        "window": list(cfg.data.window),
        "final_model_sha256": state_sha256(params),
    }
    return info if site is None else {**info, "site": site}


def export_release(out: Path, params: dict[str, np.ndarray], info: dict) -> None:
    """Write the released model: weights (.npz, no pickle, 0640: the release service may run as
    another user of the deployment's group; nobody else reads them) and its public description."""
    out = Path(out)
    secure_dir(out, GROUP_DIR)  # the release service (the deployment's group) reads it
    save_npz(out / "model.npz", params, mode=GROUP_READ)
    write_json_atomic(out / "release.json", info)


def load_release(path: Path, device: torch.device | None = None) -> tuple[torch.nn.Module, dict]:
    """The released model (in eval mode, on ``device``: default CPU) and its description."""
    path = Path(path)
    info_file = path / "release.json"
    if not info_file.is_file():
        raise FileNotFoundError(f"{path}: no release.json (export one with a finished server run)")
    info = json.loads(info_file.read_text())
    params = load_npz(path / "model.npz")
    model = build_model(info["base"], info["norm"], info["groups"], seed=0)
    set_params(model, params)
    model.to(device or "cpu").eval()
    return model, info
