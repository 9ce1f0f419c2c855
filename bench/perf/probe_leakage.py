"""Probe a profile's utility and leakage in one process, in minutes: how the standard profile was
chosen (docs/results.md, "Choosing the standard profile").

For each method: the five sites' federation simulated in one process
(``common.fl.simulate.simulate_method``: the real local training, seeds and weighted
average, no network), test and train Dice, and two membership signals on every training slice
(members) against every holdout slice (non-members): the loss threshold and offline LiRA
against ``--shadows`` shadow federations trained on the attacker pool (``attacks.ladder``). It is
an oracle-free but *referee-side* probe — no release service, no query budget — so its AUCs are
close to, not equal to, the audit's; use ``fedonco bench`` for the benchmark's numbers.

    python bench/perf/probe_leakage.py --config configs/standard.toml --methods fedavg,dpsgd-pt
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from attacks.calibrated import lira_signal  # noqa: E402
from attacks.features import IDX, image_features  # noqa: E402
from attacks.shadows import dataset, train_shadows  # noqa: E402
from bench.audit_metrics import audit_metrics  # noqa: E402
from common.config import load_config  # noqa: E402
from common.data.build import build_dataset  # noqa: E402
from common.data.loader import load_arrays  # noqa: E402
from common.fl.simulate import simulate_method  # noqa: E402
from common.metrics import segmentation_metrics  # noqa: E402
from common.training.pretrain import CACHE_ENV  # noqa: E402
from common.transforms import predict_hu  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="profile (TOML) to probe")
    p.add_argument("--methods", default="fedavg", help="comma-separated methods")
    p.add_argument("--data", help="dataset directory (built here if missing; default: a temp dir)")
    p.add_argument("--shadows", type=int, default=1, help="shadow federations for LiRA")
    args = p.parse_args()
    cfg = load_config(args.config)
    data = Path(args.data or tempfile.mkdtemp(prefix="probe-"))
    os.environ.setdefault(CACHE_ENV, str(data / "cache"))
    if not (data / "manifest.json").is_file():
        build_dataset(cfg, data, gallery=False)
    window = tuple(cfg.data.window)
    train = {s: load_arrays(data, "train", s) for s in cfg.site_names}
    holdout, test, pool = (load_arrays(data, s) for s in ("holdout", "test", "attacker"))
    mem_i = np.concatenate([t[0] for t in train.values()])
    mem_m = np.concatenate([t[1] for t in train.values()])
    cand_i, cand_m = np.concatenate([mem_i, holdout[0]]), np.concatenate([mem_m, holdout[1]])
    member = np.r_[np.ones(len(mem_i), bool), np.zeros(len(holdout[0]), bool)]

    def dice(model, images, masks):
        probs = predict_hu(model.eval(), images, window, 64)
        return segmentation_metrics(probs[:, None], masks[:, None].astype(np.uint8))["dice"]

    def score(name, s):
        m = audit_metrics(s, member, n_boot=200)
        lo, hi = m["auc_ci95"]
        return (
            f"{name} AUC {m['auc']:.3f} [{lo:.2f}, {hi:.2f}] TPR@1%FPR {m['tpr_at_1pct_fpr']:.3f}"
        )

    for method in args.methods.split(","):
        t0 = time.perf_counter()
        sites = {s: dataset(t[0], t[1], window) for s, t in train.items()}
        fed = simulate_method(cfg, method, sites, seed=cfg.seed)
        model = fed.model(cfg, method)
        t_train = time.perf_counter() - t0
        probs = predict_hu(model.eval(), cand_i, window, 64)
        loss = -image_features(probs, cand_m)[:, IDX["seg_loss"]]
        t1 = time.perf_counter()
        shadows = train_shadows(cfg, method, pool[0], pool[1], args.shadows, cfg.seed, pool[3])
        ref = np.mean([lira_signal(sh.predict(cand_i), cand_m) for sh in shadows], axis=0)
        lira = lira_signal(probs, cand_m) - ref
        eps = [m.get("epsilon") for m in fed.metrics.values() if m.get("epsilon") is not None]
        row = {
            "method": method,
            "test_dice": round(dice(model, test[0], test[1]), 3),
            "train_dice": round(dice(model, mem_i, mem_m), 3),
            "epsilon_worst_site": round(max(eps), 2) if eps else None,
            "members": int(member.sum()),
            "non_members": int((~member).sum()),
            "train_s": round(t_train, 1),
            "shadows_s": round(time.perf_counter() - t1, 1),
        }
        print(json.dumps(row))
        print(f"  {score('loss', loss)} | {score('LiRA', lira)}", flush=True)
    return 0


if __name__ == "__main__":
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    sys.exit(main())
