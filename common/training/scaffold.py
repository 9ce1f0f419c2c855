"""SCAFFOLD at a site (Karimireddy et al., ICML 2020, "SCAFFOLD: Stochastic Controlled Averaging
for Federated Learning", Algorithm 1); the server side is ``common/fl/scaffold.py``.

Each local step corrects the gradient by the drift between the server's control variate ``c``
(the federation's mean gradient, sent with the round's weights) and the site's own ``c_i`` (kept
at the site, never sent):

    y <- y - lr · opt(g_i(y) - c_i + c)

After the round the site's new control variate is the mean of the gradients it stepped with
(before the correction). With plain SGD that is exactly the paper's option II,
c_i+ = c_i - c + (x - y) / (K lr); it is defined the same way for Adam, whose steps do not have
the gradient's scale. The site uploads n_k · (c_i+ - c_i) next to n_k · y, summed by the same
aggregation layer (secure aggregation included); the server never sees one site's c_i.

Under DP-SGD the gradient recorded is the noisy one (Opacus' clip + noise, the hook runs after
it): c_i, the correction and the upload are post-processing of DP releases, so ε is unchanged.

Both training loops call the object after each gradient is final and before the optimizer step
(``common/training/local.py`` ``grad_hook``, ``common/training/dp/loop.py`` after the noise).
The wire names are ``control/<parameter>``: state_dict keys never contain a '/'.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

PREFIX = "control/"


def trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


class ControlVariates:
    """One round's correction at one site; call it as the loops' gradient hook.

    ``server``: the server's ``c`` as received (``control/<name>`` for every trainable parameter
    of ``model``); ``site``: the site's ``c_i`` as kept from its last round (same names; missing:
    zeros, a site's first round). Anything else is refused with a ValueError (network input).
    """

    def __init__(
        self,
        model: nn.Module,
        server: Mapping[str, np.ndarray],
        site: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        self.params = trainable(model)
        want = {PREFIX + n for n in self.params}
        if set(server) != want:
            raise ValueError(
                f"SCAFFOLD: the server's control variates name "
                f"{sorted(set(server) ^ want)[:3]} wrongly"
            )
        site = dict(site or {})
        device = next(model.parameters()).device
        self.site: dict[str, torch.Tensor] = {}
        self.correction: dict[str, torch.Tensor] = {}
        self.sum: dict[str, torch.Tensor] = {}
        for n, p in self.params.items():
            c = np.asarray(server[PREFIX + n])
            c_i = np.asarray(site.get(PREFIX + n, np.zeros(p.shape, np.float32)))
            for what, v in (("server", c), ("site", c_i)):
                if v.shape != tuple(p.shape) or not np.isfinite(v).all():
                    raise ValueError(
                        f"SCAFFOLD: the {what} control variate of {n} has shape "
                        f"{v.shape} (expected {tuple(p.shape)}) or is not finite"
                    )
            self.site[n] = torch.as_tensor(c_i, dtype=p.dtype, device=device)
            self.correction[n] = torch.as_tensor(c, dtype=p.dtype, device=device) - self.site[n]
            self.sum[n] = torch.zeros_like(p)
        self.steps = 0

    def __call__(self) -> None:
        """Record each parameter's gradient, then add c - c_i to it."""
        with torch.no_grad():
            for n, p in self.params.items():
                if p.grad is None:
                    raise ValueError(f"SCAFFOLD: no gradient for {n} at step {self.steps + 1}")
                self.sum[n] += p.grad
                p.grad.add_(self.correction[n])
        self.steps += 1

    def finish(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(the site's new c_i to keep, c_i+ - c_i to upload), both under ``control/`` names."""
        if self.steps == 0:
            raise ValueError("SCAFFOLD: the round took no step")
        keep, delta = {}, {}
        for n, s in self.sum.items():
            new = s / self.steps
            keep[PREFIX + n] = new.cpu().numpy()
            delta[PREFIX + n] = (new - self.site[n]).cpu().numpy()
        return keep, delta
