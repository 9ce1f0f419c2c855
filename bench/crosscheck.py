"""An independent check of the ladder: IBM's Adversarial Robustness Toolbox (ART) attacks the same
per-image features our shadow rung uses, and its AUC is reported beside our best rung's.

If an independent implementation found materially more leakage on the same inputs, our ladder
would be underestimating it. ART's ``MembershipInferenceBlackBox`` is trained on the attacker's
shadow features (IN vs OUT pool slices, ``attacks.features``) — exactly what our ``shadow`` rung
sees — with its own attack models (its PyTorch MLP, random forest, gradient boosting) and its own
scaling, then scores the target's candidates. The target is reached through a release service on
127.0.0.1 (``Predict`` only); the shadows come from the run's cache (the audit trained them).

    python -m bench.crosscheck runs/<run> --method fedavg

ART is an optional dependency (``pip install adversarial-robustness-toolbox==1.20.1``; the test
suite installs it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from bench.audit_metrics import audit_metrics

ART_MODELS = ("nn", "rf", "gb")


def _art_attack(kind: str, train_in: np.ndarray, train_out: np.ndarray, target: np.ndarray):
    from art.attacks.inference.membership_inference import MembershipInferenceBlackBox
    from art.estimators.classification import SklearnClassifier
    from sklearn.linear_model import LogisticRegression

    # ART wants a target estimator even when it is handed predictions; this one is never called
    # (``pred`` is given): ART sizes its MLP's input by the estimator's class count, so it has
    # one "class" per feature, and the attack sees only the features.
    f = train_in.shape[1]
    dummy = SklearnClassifier(LogisticRegression().fit(np.eye(f), np.arange(f)))
    attack = MembershipInferenceBlackBox(dummy, input_type="prediction", attack_model_type=kind)
    np.random.seed(0)  # noqa: NPY002  (ART draws from the global generators)
    import torch

    torch.manual_seed(0)
    attack.fit(pred=train_in.astype(np.float32), test_pred=train_out.astype(np.float32))
    out = np.asarray(attack.infer(None, pred=target.astype(np.float32), probabilities=True))
    return out[:, -1] if out.ndim == 2 else out  # P(member)


def crosscheck(run_dir: Path, method: str, n_boot: int = 300) -> dict:
    """ART's AUCs on the method's audit features against the audit's own rungs (results.json)."""
    from attacks.features import image_features
    from attacks.remote import RemoteModel
    from attacks.shadows import train_shadows
    from bench.audit import draw_candidates, local_release, local_targets
    from common.config import load_config
    from common.data.loader import load_arrays
    from common.training.pretrain import CACHE_ENV

    cfg = load_config(run_dir / "config.json")
    os.environ.setdefault(CACHE_ENV, str(run_dir / "cache"))
    results = json.loads((run_dir / "results.json").read_text())
    mia = results["methods"][method]["mia"]
    data_dir, mdir = run_dir / "data", run_dir / method
    images, masks, member, sites = draw_candidates(
        data_dir, cfg.mia.n_members, cfg.seed, cfg.mia.nonmember_ratio
    )
    pool_images, pool_masks, _, pool_sites = load_arrays(run_dir / "attacker-pool", "attacker")
    shadows = train_shadows(
        cfg, method, pool_images, pool_masks, cfg.mia.n_shadows, cfg.seed, pool_sites
    )
    targets = local_targets(mdir)
    scores = {k: np.full(len(images), np.nan) for k in ART_MODELS}
    with local_release(mdir, mdir / "logs") as address:
        for tag, name in targets.items():
            pick = np.ones(len(images), bool) if tag == "all" else sites == tag
            site = None if tag == "all" else tag
            probs = RemoteModel(address, name).predict(images[pick])
            target = image_features(probs, masks[pick])
            feats = [
                image_features(sh.predict(pool_images, site=site), pool_masks) for sh in shadows
            ]
            train_in = np.concatenate(
                [f[sh.member_mask] for f, sh in zip(feats, shadows, strict=True)]
            )
            train_out = np.concatenate(
                [f[~sh.member_mask] for f, sh in zip(feats, shadows, strict=True)]
            )
            for kind in ART_MODELS:
                scores[kind][pick] = _art_attack(kind, train_in, train_out, target)
    ok = ~np.isnan(scores[ART_MODELS[0]])
    art = {
        f"art_{k}": audit_metrics(v[ok], member[ok], n_boot=n_boot, seed=cfg.seed)
        for k, v in scores.items()
    }
    ours = {
        k: {"auc": v["auc"], "tpr_at_1pct_fpr": v["tpr_at_1pct_fpr"]}
        for k, v in mia["attacks"].items()
    }
    return {
        "method": method,
        "ours": ours,
        "ours_strongest": mia.get("attack"),
        "art": {
            k: {"auc": v["auc"], "auc_ci95": v["auc_ci95"], "tpr_at_1pct_fpr": v["tpr_at_1pct_fpr"]}
            for k, v in art.items()
        },
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a finished run directory (runs/<run>, with results.json)")
    p.add_argument("--method", default="fedavg", help="an audited method of that run")
    p.add_argument("--out", help="write the comparison here as JSON (default: print it)")
    args = p.parse_args(argv)
    try:
        import art  # noqa: F401
    except ImportError:
        print(
            "ART is not installed: pip install adversarial-robustness-toolbox==1.20.1",
            file=sys.stderr,
        )
        return 2
    out = crosscheck(Path(args.run), args.method)
    text = json.dumps(out, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    ours_best = max(v["auc"] for k, v in out["ours"].items() if k != "blind")
    art_best = max(v["auc"] for v in out["art"].values())
    print(text)
    print(f"best AUC: ours {ours_best:.3f}, ART {art_best:.3f} ({art_best - ours_best:+.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
