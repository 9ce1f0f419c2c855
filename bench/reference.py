"""The reference rows of the table (FLamby's baselines): what federation buys, and its ceiling.

- ``pooled``: one model trained centrally on every site's training slices with the same schedule
  (rounds × local epochs, batch, learning rate, a fresh optimizer each round): the ceiling a
  federation approaches;
- ``local``: each site trains alone on its own slices with the same schedule: what a hospital
  gets without federating. Its Dice is each site's model on its own test slices (pooled like
  FedBN's); ``dice_cross`` has every site's model on every site's test slices, and
  ``dice_all_sites`` each model on all five test sets, averaged over the sites.

They are trained here, in one process (``common.fl.simulate.simulate_method``), because
they are not federations; their models are released and audited exactly like a method's
(``<row>/release`` or ``<row>/site-state/local/site<S>/release``, the same release service and
black-box attacker, whose shadows are trained the same way).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from common.config import Config
from common.data.loader import load_arrays
from common.device import device_record
from common.evaluation import evaluate_sums, summarize
from common.fl.simulate import simulate_method
from common.layout import RunLayout
from common.methods import get_method
from common.metrics import metrics_from_sums
from common.model import count_parameters, get_params, state_sha256
from common.records import read_result, run_result, write_record
from common.release import export_release, release_info
from common.training.pretrain import initial_model
from common.transforms import to_inputs


def _site_data(
    data_dir: Path, split: str, window, sites: list[str]
) -> dict[str, tuple[torch.Tensor, np.ndarray]]:
    out = {}
    for site in sites:
        images, masks, _, _ = load_arrays(data_dir, split, site)
        out[site] = (to_inputs(images, window), masks)
    return out


def train_reference(
    cfg: Config, method: str, data_dir: Path, out_dir: Path, device: torch.device | None = None
) -> dict:
    """Train, evaluate and release a reference row on ``device`` (default CPU); its
    ``result.json`` (the keys of a server's)."""
    from torch.utils.data import TensorDataset

    spec = get_method(method)
    if spec.kind == "federated":
        raise ValueError(f"{method} is a federated method: the server runs it")
    cfg = cfg.for_method(method)
    t0 = time.perf_counter()
    window = tuple(cfg.data.window)
    train = _site_data(data_dir, "train", window, cfg.site_names)
    sites = {
        s: TensorDataset(x, torch.from_numpy(m.astype(np.float32)).unsqueeze(1))
        for s, (x, m) in train.items()
    }
    torch.manual_seed(cfg.seed)
    device = torch.device(device or "cpu")
    initial = get_params(initial_model(cfg, method, device))
    fed = simulate_method(
        cfg, method, sites, seed=cfg.seed, device=device, desc=f"{method} (reference row)"
    )  # rounds: bar or log lines
    test = _site_data(data_dir, "test", window, cfg.site_names)
    bs = cfg.train.eval_batch_size
    models = {
        s: fed.model(cfg, method, s if spec.kind == "local" else None)
        for s in cfg.site_names
        if spec.kind != "local" or s in fed.site_params
    }
    own = {s: evaluate_sums(models[s], *test[s], bs) for s in models}
    summary = summarize(own)
    cross = {}
    if spec.kind == "local":
        for s, model in models.items():
            cross[s] = {
                t: metrics_from_sums(evaluate_sums(model, *test[t], bs))["dice"] for t in test
            }
    out_dir.mkdir(parents=True, exist_ok=True)
    layout = RunLayout(out_dir)
    if spec.release == "global":
        final = fed.global_params
        export_release(layout.release, final, release_info(cfg, method, final))
    else:
        for s in models:
            params = fed.site_params[s]
            export_release(
                layout.site_release(s), params, release_info(cfg, method, params, site=s)
            )
        final = fed.global_params  # not released: only a hash for the record
    overall = summary["overall"]
    result = {
        "method": method,
        "kind": spec.kind,
        "rounds": cfg.train.rounds,
        "n_params": count_parameters(next(iter(models.values()))),
        "initial_model_sha256": state_sha256(initial),
        "final_model_sha256": state_sha256(final),
        "site_model_sha256": {s: state_sha256(p) for s, p in fed.site_params.items()},
        "evaluated_at": spec.evaluated_at,
        "dice": overall.get("dice"),
        "dice_global": overall.get("dice_global"),
        "fp_rate_empty": overall.get("fp_rate_empty"),
        "ce_loss": overall.get("ce_loss"),
        "dice_site_mean": summary["dice_site_mean"],
        "dice_per_site": {s: m["dice"] for s, m in summary["per_site"].items()},
        "dice_cross": cross or None,
        "dice_all_sites": (
            float(np.mean([np.nanmean(list(row.values())) for row in cross.values()]))
            if cross
            else None
        ),
        "train_s": time.perf_counter() - t0,
        "device": {"bench": device_record(device)},  # trained and evaluated in this process
    }
    write_record(layout.result, run_result(result))
    layout.history.write_text("[]\n")  # no federated rounds to record
    return read_result(layout.result).to_json()
