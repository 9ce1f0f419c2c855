"""White-box membership inference on released weights (Nasr et al., S&P 2019).

What this attacker has: the released model's weights (``release/model.npz`` and its
``release.json``), the public recipe, its own pool (the dataset's ``attacker`` split) and the
unlabeled candidates. What it computes that a black box cannot: for each candidate, the gradient
of the training loss (``common.metrics.seg_loss``) with respect to every parameter of the
released model, summarised per block of the U-Net (``GROUPS``) as log gradient norms, next to the
loss itself (``FEATURES``). A training slice sits near a minimum of its own loss: its gradient
is smaller than a non-member's.

Rungs (higher = member), chosen on shadow data exactly like the black-box ladder
(``attacks.ladder.select_on_shadows``: each shadow federation in turn plays the target, the
others are its references and training data; never the target's labels):

- ``wb_gradnorm``: minus the log norm of the whole gradient (a threshold attack, no shadows).
- ``wb_shadow``: Nasr et al.'s learned attack: a classifier on the per-block log gradient norms
  and the loss, trained on the shadows' IN/OUT pool slices.
- ``wb_calibrated``: per-candidate calibration (LiRA-style, offline, fixed variance): the
  target's minus-log gradient norm against the same candidate's on the reference models that did
  not train on it (``attacks.calibrated.lira_offline``).

The shadows are the black-box attacker's (``attacks.shadows``: the same public recipe, pool and
seed; with ``FEDONCO_CACHE_DIR`` set the white-box attacker loads them instead of training).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from attacks.calibrated import lira_offline
from attacks.rungs import shadow_from_features
from common.metrics import seg_loss
from common.transforms import to_inputs

log = logging.getLogger(__name__)

# the U-Net's blocks (common.model.UNet): a parameter belongs to the block its name starts with
GROUPS: tuple[str, ...] = ("enc1", "enc2", "bottleneck", "up2", "dec2", "up1", "dec1", "head")
FEATURES: tuple[str, ...] = (*(f"log_gn_{g}" for g in GROUPS), "log_gn_total", "loss")
TOTAL, LOSS = FEATURES.index("log_gn_total"), FEATURES.index("loss")
GRAD_BATCH = 16  # candidates per vectorised per-sample gradient call
TINY = 1e-30


def gradient_features(
    model: nn.Module,
    images_hu: np.ndarray,
    masks: np.ndarray,
    window: tuple[float, float],
    batch: int = GRAD_BATCH,
) -> np.ndarray:
    """(N, len(FEATURES)) float64: per candidate, the log norm of the loss gradient per block of
    the model and in all, and the loss; the model in eval mode (the released model as it is
    served), its weights unchanged."""
    images_hu, masks = np.asarray(images_hu), np.asarray(masks)
    if images_hu.ndim != 3 or images_hu.shape != masks.shape:
        raise ValueError(
            f"images and masks must both be (N, H, W), got {images_hu.shape}, {masks.shape}"
        )
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    group_of = [_group(n) for n in params]

    def loss_of(p, x, y):
        out = functional_call(model, (p, buffers), (x[None],))
        return seg_loss(out, y[None])

    per_sample = vmap(grad(loss_of, has_aux=False), in_dims=(None, 0, 0))
    rows = []
    for start in range(0, len(images_hu), batch):
        x = to_inputs(images_hu[start : start + batch], window).to(device)
        y = torch.from_numpy(masks[start : start + batch].astype(np.float32)).unsqueeze(1)
        y = y.to(device)
        with torch.no_grad():
            losses = seg_loss(model(x), y, reduction="none").double().cpu()
        grads = per_sample(params, x, y)
        sq = torch.zeros(len(x), len(GROUPS), dtype=torch.float64)
        for (_n, g), k in zip(grads.items(), group_of, strict=True):
            sq[:, k] += g.reshape(len(x), -1).double().pow(2).sum(dim=1).cpu()
        total = sq.sum(dim=1, keepdim=True)
        feats = torch.cat([(sq + TINY).log() / 2, (total + TINY).log() / 2, losses[:, None]], 1)
        rows.append(feats.numpy())
    model.train(was)
    return np.concatenate(rows) if rows else np.zeros((0, len(FEATURES)))


def _group(name: str) -> int:
    for k, g in enumerate(GROUPS):
        if name == g or name.startswith(g + "."):
            return k
    raise ValueError(f"parameter {name!r} is in none of the U-Net's blocks {GROUPS}")


@dataclass
class WhiteboxEvidence:
    """What every white-box rung scores from: the target's features on N slices (N, F), the
    references' on the same slices (S, N, F), which references did not train on each slice
    (``out`` (S, N); None: none did), and the learned rung's training data (the references'
    features on their pool (S, P, F) with membership (S, P))."""

    target: np.ndarray
    reference: np.ndarray
    train_x: np.ndarray
    train_members: np.ndarray
    out: np.ndarray | None = None
    classifier: str = "lr"


def _gradnorm(ev: WhiteboxEvidence) -> np.ndarray:
    return -ev.target[:, TOTAL]


def _shadow(ev: WhiteboxEvidence) -> np.ndarray:
    x = ev.train_x.reshape(-1, ev.train_x.shape[-1])
    return shadow_from_features(x, np.ravel(ev.train_members), ev.target, ev.classifier)


def _calibrated(ev: WhiteboxEvidence) -> np.ndarray:
    return lira_offline(-ev.target[:, TOTAL], -ev.reference[:, :, TOTAL], ev.out)


WB_RUNGS: dict[str, Callable[[WhiteboxEvidence], np.ndarray]] = {
    "wb_gradnorm": _gradnorm,
    "wb_shadow": _shadow,
    "wb_calibrated": _calibrated,
}
WB_SUMMARY = {
    "wb_gradnorm": "minus the log norm of the loss gradient (threshold)",
    "wb_shadow": "Nasr et al.: a classifier on per-block gradient norms and the loss",
    "wb_calibrated": "the gradient norm against the same slice's on OUT reference models",
}


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels, bool)
    return float(roc_auc_score(labels, scores)) if 0 < labels.sum() < len(labels) else 0.5


def select_on_shadows(
    pool_features: np.ndarray, members: np.ndarray, classifier: str = "lr"
) -> dict[str, float]:
    """Each shadow in turn plays the target: its pool features (S, P, F) with its membership
    (S, P) as labels, the others as references and training data; each rung's mean AUC over the
    pool slices some other shadow left out. Needs two shadows or more."""
    s = len(pool_features)
    if s < 2:
        raise ValueError("selecting on shadow data needs at least two shadows")
    members = np.asarray(members, bool)
    aucs: dict[str, list[float]] = {r: [] for r in WB_RUNGS}
    for j in range(s):
        others = [k for k in range(s) if k != j]
        out = ~members[others]
        ev_mask = out.any(axis=0)
        ev = WhiteboxEvidence(
            target=pool_features[j][ev_mask],
            reference=pool_features[others][:, ev_mask],
            train_x=pool_features[others],
            train_members=members[others],
            out=out[:, ev_mask],
            classifier=classifier,
        )
        for r, score in WB_RUNGS.items():
            aucs[r].append(_auc(score(ev), members[j][ev_mask]))
    return {r: float(np.mean(v)) for r, v in aucs.items()}


@dataclass
class WhiteboxResult:
    scores: dict[str, np.ndarray]
    info: dict


def run_whitebox(
    target: nn.Module,
    shadow_models: Sequence[nn.Module],
    shadow_members: np.ndarray,
    pool: tuple[np.ndarray, np.ndarray],
    candidates: tuple[np.ndarray, np.ndarray],
    window: tuple[float, float],
    classifier: str = "lr",
) -> WhiteboxResult:
    """Every white-box rung's scores for the candidates (higher = member) and the strongest rung,
    chosen on the shadows (``select_on_shadows``; with one shadow: ``wb_calibrated``, fixed).
    ``shadow_members`` (S, P): which pool slices each shadow trained on. The candidates are from
    the target's sites, never in the attacker's pool: every shadow is OUT for them."""
    pool_images, pool_masks = pool
    cand_images, cand_masks = candidates
    pool_f = np.stack(
        [gradient_features(m, pool_images, pool_masks, window) for m in shadow_models]
    )
    ref_f = np.stack([gradient_features(m, cand_images, cand_masks, window) for m in shadow_models])
    tgt_f = gradient_features(target, cand_images, cand_masks, window)
    members = np.asarray(shadow_members, bool)
    selection = select_on_shadows(pool_f, members, classifier) if len(shadow_models) >= 2 else {}
    ev = WhiteboxEvidence(
        target=tgt_f, reference=ref_f, train_x=pool_f, train_members=members, classifier=classifier
    )
    scores = {r: np.asarray(score(ev), np.float64) for r, score in WB_RUNGS.items()}
    strongest = max(sorted(selection), key=selection.get) if selection else "wb_calibrated"
    info = {
        "selection": selection,
        "strongest": strongest,
        "selected_on": "shadows" if selection else "fixed (one shadow)",
        "n_shadows": len(shadow_models),
        "features": list(FEATURES),
        "rungs": WB_SUMMARY,
    }
    return WhiteboxResult(scores, info)
