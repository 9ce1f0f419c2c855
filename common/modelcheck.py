"""A site's check of the global model it is sent, on its own data, before it trains on it.

A server can craft the model it sends every site alike so that one site's update gives back
pieces of its slices (trap weights, ``attacks/trap.py``): units that fire on a handful of
positions of the site's batch, so that their weight gradient is one input patch, and several
units with the same kernel at nested thresholds, whose differences isolate one position each.
Neither happens in a model that training produced, and a site can see both before it trains:

- **sparse units**: a ReLU channel that fires on some, but fewer than ``SPARSE_FRACTION``, of
  the positions of the site's batch (a dead channel, firing nowhere, reveals nothing: its
  gradient is zero);
- **duplicate kernels**: two output channels of one convolution whose kernels point the same
  way (cosine above ``MAX_COSINE``).

The site refuses the round (``ModelCheckError``, a ValueError: ``fedonco client`` declines the
fit task with the message). Only units after BatchNorm are held to the firing rule: after
GroupNorm, honest models pretrained on public slices have units that fire on a handful of
positions. How close honest models come to both limits: ``python -m bench.trap --honest``
(every round's global model of the profile's methods; docs/runs/threats/trap/trap.md). What it
does not stop: an attacker who keeps every unit dense and every kernel distinct (a unit's
gradient is then an average over at least 1% of a batch's positions, not a patch), traps
through other layers, a GroupNorm model with distinct kernels, and whatever the model memorises
in honest training. It is a heuristic; per-site DP-SGD bounds what any crafted model obtains.
At the paper's width (base 52: 52 kernels of 9 weights in the first layer) random
initialisation alone reaches cosine 0.9898 (tests/unit/test_trap.py); trained models at that
width are untested against ``MAX_COSINE``.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

SPARSE_FRACTION = 0.01  # a channel firing on > 0 and < 1% of the batch's positions is a trap
MAX_COSINE = 0.99  # two kernels of one layer closer than this (about 8 degrees) are a trap
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_CONVS = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)


class ModelCheckError(ValueError):
    """The model a site was sent looks crafted to reveal its data: the site refuses the round."""


@torch.no_grad()
def firing(
    model: nn.Module, x: torch.Tensor, after: tuple[type[nn.Module], ...] | None = None
) -> dict[str, np.ndarray]:
    """Per ReLU module that follows a BatchNorm layer (or a layer of the types ``after``): the
    fraction of the batch's positions where each channel fires, with the model in training
    mode as local training runs it (the norm layers on the batch's own statistics). ``model``
    is not changed (a copy runs it)."""
    after = after or _BATCHNORMS
    probe = copy.deepcopy(model).train()
    out: dict[str, np.ndarray] = {}
    last: list[nn.Module | None] = [None]  # the leaf module that ran last

    def ran(module, _inp, y):
        if isinstance(module, nn.ReLU) and isinstance(last[0], after):
            dims = [0, *range(2, y.dim())]
            out[names[module]] = (y > 0).float().mean(dim=dims).cpu().numpy()
        last[0] = module

    names = {m: n for n, m in probe.named_modules()}
    leaves = [m for m in probe.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(ran) for m in leaves]
    try:
        probe(x)
    finally:
        for h in hooks:
            h.remove()
    return out


def kernel_cosines(model: nn.Module) -> dict[str, float]:
    """Per convolution with at least two output channels: the largest cosine between two of its
    output channels' kernels (channels with an all-zero kernel left out)."""
    out = {}
    for name, module in model.named_modules():
        if not isinstance(module, _CONVS):
            continue
        w = module.weight.detach().float()
        if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            w = w.transpose(0, 1)
        w = w.reshape(w.shape[0], -1)
        norms = w.norm(dim=1)
        w = w[norms > 0] / norms[norms > 0, None]
        if len(w) < 2:
            continue
        cos = w @ w.T
        cos.fill_diagonal_(-1.0)
        out[name] = float(cos.max())
    return out


def check_model(model: nn.Module, x: torch.Tensor) -> None:
    """Raise ``ModelCheckError`` if ``model`` has sparse units on the site's batch ``x`` or
    duplicate kernels (the module docstring); return None for a model training could produce."""
    problems = []
    for name, frac in firing(model, x).items():
        sparse = np.flatnonzero((frac > 0) & (frac < SPARSE_FRACTION))
        if len(sparse):
            problems.append(
                f"{len(sparse)} channel(s) of {name} fire on fewer than "
                f"{SPARSE_FRACTION:.0%} of the batch's positions (least {frac[sparse].min():.2%})"
            )
    for name, cos in kernel_cosines(model).items():
        if cos > MAX_COSINE:
            problems.append(f"two kernels of {name} point the same way (cosine {cos:.4f})")
    if problems:
        raise ModelCheckError(
            "the model looks crafted to reveal this site's inputs (trap weights): "
            + "; ".join(problems[:3])
            + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        )
