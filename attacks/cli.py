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

from attacks.remote import RemoteModel
from common.config import load_config
from common.data.loader import load_arrays
from common.io import load_npz

log = logging.getLogger(__name__)


def load_candidates(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Candidate slices and masks (no membership labels), from a plain .npz (no pickle)."""
    z = load_npz(path)
    missing = {"images", "masks"} - set(z)
    if missing:
        raise ValueError(
            f"{path}: candidates need arrays 'images' and 'masks' (missing {sorted(missing)})"
        )
    if "is_member" in z:
        raise ValueError(f"{path}: candidates must not carry membership labels")
    return z["images"], z["masks"]


def run_attack_cmd(args) -> int:
    from attacks.ladder import run_ladder

    cfg = load_config(args.config)
    t0 = time.perf_counter()
    target = RemoteModel(args.target, args.model)
    pool_images, pool_masks, _, _ = load_arrays(args.pool, "attacker")
    if len(pool_images) == 0:
        raise ValueError(f"{args.pool}: no attacker split to train shadow models on")
    cand_images, cand_masks = load_candidates(Path(args.candidates))
    queries = {"n": 0}

    def predict(images):
        queries["n"] += len(images)
        return target.predict(images)

    scores = run_ladder(predict, cfg, target.method, (pool_images, pool_masks), (cand_images, cand_masks),
                        n_shadows=args.shadows or cfg.mia.n_shadows, seed=args.seed)  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "scores.npz", **{k: np.asarray(v, np.float64) for k, v in scores.items()})
    info = {"attacks": sorted(scores), "method": target.method, "n_candidates": int(len(cand_images)),
            "n_shadows": args.shadows or cfg.mia.n_shadows, "queries": queries["n"],
            "wall_s": time.perf_counter() - t0}  # fmt: skip
    (out / "attack.json").write_text(json.dumps(info, indent=1) + "\n")
    log.info("attack on %s done: %d candidates, %d queries, %.1fs", args.target, info["n_candidates"],
             queries["n"], info["wall_s"])  # fmt: skip
    return 0
