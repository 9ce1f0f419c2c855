"""Local training at a site: plain, or FedProx with the squared proximal term.

A loader yields (image, mask) batches, both float32 (B, 1, H, W). The loss is ``seg_loss``
(BCE + soft Dice per image, averaged over the batch) plus, for FedProx,
(mu/2)·‖w − w_global‖² summed over the trainable parameters.

Optimizer: Adam (lr 1e-3 by default), with fresh state every round. Adam's per-coordinate step
sizes make one learning rate work across BatchNorm and GroupNorm models, FedAvg/FedProx/FedBN
and the tiny CPU profiles where only a few local steps happen per round; SGD with momentum would
need its learning rate tuned per profile. Its moments are reset each round because they describe
the previous global model, and optimizer state never leaves the site. "sgd" (momentum 0.9) is
available for comparison. DP-SGD has its own loop in common/training/dp/ (Poisson batches, which may be
empty, and the FedProx gradient added after the noise).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Literal

import numpy as np
import torch
from torch import nn

from common.metrics import seg_loss

log = logging.getLogger(__name__)

OptimizerName = Literal["adam", "sgd"]


def make_optimizer(model: nn.Module, name: OptimizerName, lr: float) -> torch.optim.Optimizer:
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    raise ValueError(f"unknown optimizer {name!r}; use 'adam' or 'sgd'")


def proximal_anchor(
    model: nn.Module, global_params: Mapping[str, np.ndarray] | None = None
) -> dict[str, torch.Tensor]:
    """Detached copies of the global weights for each trainable parameter of ``model``.

    Without ``global_params`` the model's current weights are the anchor (a site has just loaded
    the global model when training starts). Copies, never views: an anchor sharing storage with
    the live parameters would make the term identically zero.
    """
    anchor = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if global_params is None:
            anchor[name] = p.detach().clone()
        elif name in global_params:
            anchor[name] = torch.tensor(
                np.asarray(global_params[name]), dtype=p.dtype, device=p.device
            )
        else:
            raise ValueError(f"global_params has no entry for trainable parameter {name!r}")
    return anchor


def proximal_term(model: nn.Module, anchor: Mapping[str, torch.Tensor], mu: float) -> torch.Tensor:
    """(mu/2) · sum over trainable parameters of ‖w − w_anchor‖² (squared, not the norm)."""
    total = torch.zeros((), device=next(model.parameters()).device)
    for name, p in model.named_parameters():
        if p.requires_grad and name in anchor:
            total = total + (p - anchor[name]).pow(2).sum()
    return 0.5 * mu * total


def run_epochs(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    proximal_mu: float = 0.0,
    anchor: Mapping[str, torch.Tensor] | None = None,
    grad_hook: Callable[[], None] | None = None,
) -> dict[str, float]:
    """The training loop itself; returns the last epoch's mean losses and counts. Each batch is
    moved to the device of the model's parameters (a no-op on the CPU). ``grad_hook`` runs after
    each backward pass, before the optimizer step (SCAFFOLD's correction,
    ``common/training/scaffold.py``)."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if proximal_mu < 0:
        raise ValueError(f"proximal_mu must be >= 0, got {proximal_mu}")
    if proximal_mu > 0 and anchor is None:
        raise ValueError("proximal_mu > 0 needs the anchor (global weights) of the round")
    model.train()
    device = next(model.parameters()).device
    steps = 0
    for epoch in range(epochs):
        seg_sum, prox_sum, batches, seen = 0.0, 0.0, 0, 0
        for images, masks in loader:
            images, masks = images.to(device), masks.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = seg_loss(model(images), masks)
            prox = proximal_term(model, anchor, proximal_mu) if proximal_mu > 0 else None
            total = loss if prox is None else loss + prox
            if not torch.isfinite(total):
                raise FloatingPointError(
                    f"non-finite loss at epoch {epoch + 1}, step {steps + 1}: lower the lr"
                )
            total.backward()
            if grad_hook is not None:
                grad_hook()
            optimizer.step()
            seg_sum += float(loss.detach())
            prox_sum += 0.0 if prox is None else float(prox.detach())
            batches += 1
            seen += int(images.shape[0])
            steps += 1
        if batches == 0:
            raise ValueError("the loader yielded no batch: the site has no training data")
        log.debug("epoch %d/%d: loss %.4f", epoch + 1, epochs, seg_sum / batches)
    return {
        "loss": seg_sum / batches,
        "prox": prox_sum / batches,
        "steps": float(steps),
        "examples_last_epoch": float(seen),
    }


def train_local(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    epochs: int,
    lr: float,
    seed: int,
    proximal_mu: float = 0.0,
    global_params: Mapping[str, np.ndarray] | None = None,
    optimizer: OptimizerName = "adam",
    grad_hook: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Train ``model`` in place for ``epochs`` and return metrics.

    Trains where the model's parameters are (``model.to(device)`` first for a GPU); batches
    follow them. Deterministic on CPU for a given ``seed``: training (including a shuffling DataLoader without
    its own generator) runs inside a forked torch RNG seeded with ``seed``, and the caller's
    global RNG state is left as it was. FedProx: ``proximal_mu`` > 0 adds the squared proximal
    term towards ``global_params`` (default: the model's weights at the start of the call).
    The returned ``num_examples`` (the site's FedAvg weight) is the dataset size when known.
    """
    start = time.perf_counter()
    was_training = model.training
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        opt = make_optimizer(model, optimizer, lr)
        anchor = proximal_anchor(model, global_params) if proximal_mu > 0 else None
        metrics = run_epochs(
            model,
            loader,
            opt,
            epochs=epochs,
            proximal_mu=proximal_mu,
            anchor=anchor,
            grad_hook=grad_hook,
        )
    model.train(was_training)
    dataset = getattr(loader, "dataset", None)
    n = len(dataset) if dataset is not None and hasattr(dataset, "__len__") else None
    metrics["num_examples"] = float(n if n is not None else metrics["examples_last_epoch"])
    metrics["train_time_s"] = time.perf_counter() - start
    return metrics


def weighted_contribution(
    params: Mapping[str, np.ndarray], num_examples: int
) -> dict[str, np.ndarray]:
    """What a site uploads: ``num_examples * params`` per key, in each array's dtype.

    The aggregation layer (plain sum or secure aggregation) only ever adds these up; the strategy
    divides the sum by the total number of examples (see common/fl/strategy.py).
    """
    if num_examples <= 0:
        raise ValueError(f"num_examples must be positive, got {num_examples}")
    return {
        k: (np.asarray(v, dtype=np.float64) * num_examples).astype(np.asarray(v).dtype)
        for k, v in params.items()
    }
