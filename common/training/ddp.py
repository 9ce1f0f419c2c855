"""Distributed DP-SGD (method ``ddp-sgd``): one DP-SGD step per round over the union of the sites'
Poisson samples, whose noise the sites add in shares and the server only ever sees summed.

Per round, every site (``DDPSite.noisy_sum``):

1. draws its Poisson sample at the run's rate q (every slice independently; q = 1: all of them);
2. computes each slice's gradient of the global model, clips it to L2 norm C, multiplies it by the
   scale s and rounds it to integers (nearest), and sums them;
3. adds its share of the noise: Skellam noise of variance ``mu_share`` per coordinate (the
   difference of two Poisson(mu_share / 2)), integer, so it survives modular arithmetic;
4. reduces the result modulo 2**32: the vector secure aggregation masks.

The server unmasks only the sum over the sites (the masked-input stage of secure aggregation):
sum of the rounded clipped gradients + Skellam noise of variance (number of sites) * mu_share —
a sum of independent Skellams is Skellam. Shares are sized for the worst case, ``mu_share = mu /
t`` with t the secure-aggregation threshold (a round with fewer than t masked inputs aborts), so
any round that completes carries at least the target variance mu. The server divides by s and by
the expected union batch q * sum(n_k) and takes an optimizer step (``ServerAdam``; the step is
post-processing: it costs no privacy).

Choice of s: s*C = 50*sqrt(d) (``SCALE_FACTOR``), so nearest rounding inflates the sensitivity
by at most 1% (``common.training.dp.skellam.sensitivities``); a round's sum stays far inside
int32 (``wrap_free``), so modular reduction never clips (checked per round at the server).
Accounting: ``common.training.dp.skellam``. A site's sample and share come from its
``NoiseSource`` (``common.training.dp.randomness``): a key the server never sees, fresh per
attempt of a round, so a re-run round never repeats a share (docs/dp.md, "Randomness"). The
in-process simulator (shadow federations) seeds them from its own seed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from common.training.dp.adjacency import REPLACE_ONE
from common.training.dp.grad_sample import (
    check_dp_model,
    make_grad_sample_module,
    per_sample_backward,
    release_grad_sample_module,
)
from common.training.dp.settings import DPConfigError
from common.training.dp.skellam import noise_for_epsilon, sensitivities

SCALE_FACTOR = 50.0
SAMPLE_STREAM, NOISE_STREAM = 0x5A11, 0x5E11
INT32_MAX = 2**31 - 1


def ddp_scale(clip: float, dim: int) -> float:
    """s with s*C = SCALE_FACTOR * sqrt(d)."""
    return SCALE_FACTOR * math.sqrt(dim) / clip


@dataclass(frozen=True)
class DDPPlan:
    """The public parameters of a ``ddp-sgd`` run, fixed before round 1 (the server's)."""

    q: float  # Poisson rate of every slice at every site
    clip: float  # C
    scale: float  # s
    dim: int  # d, parameters that leave a site
    delta1: float
    delta2: float
    mu: float  # target variance of the summed noise (integer units)
    mu_share: float  # each site's share: mu / t
    threshold: int  # t
    rounds: int
    delta: float
    target_epsilon: float | None
    adjacency: str = REPLACE_ONE  # the relation epsilon (and target_epsilon) is stated for

    @property
    def noise_multiplier(self) -> float:
        """sigma in DP-SGD's units: noise std / sensitivity."""
        return math.sqrt(self.mu) / self.delta2

    def as_dict(self) -> dict:
        """As results.json records it (with DP-SGD's names for sigma and C)."""
        return {
            **asdict(self),
            "noise_multiplier": self.noise_multiplier,
            "max_grad_norm": self.clip,
        }


def make_plan(
    *,
    q: float,
    clip: float,
    dim: int,
    threshold: int,
    rounds: int,
    delta: float,
    noise_multiplier: float | None = None,
    target_epsilon: float | None = None,
    adjacency: str = REPLACE_ONE,
) -> DDPPlan:
    """The run's plan: s, the sensitivities and the noise, from a noise multiplier (sigma: mu =
    (sigma*Delta2)**2) or from a target epsilon over ``rounds`` rounds (the smallest such mu)."""
    if not 0 < q <= 1:
        raise DPConfigError(f"ddp-sgd's sample rate must be in (0, 1], got {q}")
    if threshold < 1 or rounds < 1:
        raise DPConfigError("ddp-sgd needs a threshold >= 1 and rounds >= 1")
    if (noise_multiplier is None) == (target_epsilon is None):
        raise DPConfigError("give exactly one of noise_multiplier and target_epsilon")
    scale = ddp_scale(clip, dim)
    d1, d2 = sensitivities(scale, clip, dim)
    if target_epsilon is not None:
        mu = noise_for_epsilon(target_epsilon, delta, q, rounds, d1, d2, adjacency)
    else:
        mu = (float(noise_multiplier) * d2) ** 2
    return DDPPlan(
        q,
        clip,
        scale,
        dim,
        d1,
        d2,
        mu,
        mu / threshold,
        threshold,
        rounds,
        delta,
        target_epsilon,
        adjacency,
    )


def plan_for(cfg, dim: int) -> DDPPlan:
    """The plan of a run of profile ``cfg`` (``cfg.for_method``'s) whose shared parameters have
    ``dim`` values: q = ``dp.ddp_sample_rate``, C, delta and sigma or the target epsilon from
    ``[dp]``, t = ``secagg.threshold``, one step per ``train.rounds``."""
    if not cfg.secagg.enabled:
        raise DPConfigError(
            "ddp-sgd needs secure aggregation (secagg.enabled): the server must "
            "only ever see the sum of the sites' noise shares"
        )
    d = cfg.dp
    return make_plan(
        q=d.ddp_sample_rate,
        clip=d.max_grad_norm,
        dim=dim,
        threshold=cfg.secagg.threshold,
        rounds=cfg.train.rounds,
        delta=d.delta,
        noise_multiplier=None if d.target_epsilon else d.noise_multiplier,
        target_epsilon=d.target_epsilon,
        adjacency=d.adjacency,
    )


def wrap_free(plan_scale: float, clip: float, total_examples: float, mu: float) -> bool:
    """Whether a round's integer sum provably stays inside int32 (no modular wrap): every
    coordinate of the data part is at most sum(n_k) * (s*C + 1/2) in magnitude, and the noise
    (variance mu) is bounded at 40 standard deviations (Bernstein: probability < 1e-300)."""
    return total_examples * (plan_scale * clip + 0.5) + 40 * math.sqrt(mu) < INT32_MAX


MAX_MU = 1e18  # numpy's Poisson sampler takes lambda < ~9.2e18


def check_round_params(q: float, clip: float, scale: float, mu_share: float) -> None:
    """A round's public parameters as a site receives them from the server (network input):
    ``DPConfigError`` naming the first that is out of range."""
    for name, value, ok in (
        ("q", q, 0 < q <= 1),
        ("C", clip, 0 < clip < math.inf),
        ("s", scale, 0 < scale < math.inf),
        ("the noise share", mu_share, 0 <= mu_share <= MAX_MU),
    ):
        if not (isinstance(value, int | float) and ok):
            raise DPConfigError(f"ddp-sgd: {name} = {value!r} is out of range")


def skellam(rng: np.random.Generator, mu: float, size: int) -> np.ndarray:
    """Symmetric Skellam noise of variance ``mu`` (int64): Poisson(mu/2) - Poisson(mu/2)."""
    if mu <= 0:
        return np.zeros(size, np.int64)
    return rng.poisson(mu / 2, size).astype(np.int64) - rng.poisson(mu / 2, size).astype(np.int64)


def to_ring(v: np.ndarray) -> np.ndarray:
    """int64 -> uint32: the residue modulo 2**32 that secure aggregation masks."""
    return np.mod(v, 2**32).astype(np.uint32)


class DDPSite:
    """One site's side of ``ddp-sgd`` for a whole run (the model wrapped once for per-slice
    gradients, as ``DPTrainer`` does; ``close`` unwraps it)."""

    def __init__(self, model: nn.Module, grad_sample_mode: str = "fast") -> None:
        check_dp_model(model)
        self.model = model
        self.named = dict(model.named_parameters())
        self.gsm = make_grad_sample_module(model, grad_sample_mode)

    def close(self) -> None:
        release_grad_sample_module(self.gsm, list(self.named.values()))

    def clipped_sum(
        self,
        images: torch.Tensor,
        masks: torch.Tensor,
        keys: Sequence[str],
        clip: float,
        scale: float,
        chunk: int = 16,
    ) -> np.ndarray:
        """sum_i round(scale * clip_C(g_i)) over the given slices, int64, keys in order
        (computed on the model's device, returned as CPU numpy)."""
        dim = sum(self.named[k].numel() for k in keys)
        device = next(iter(self.named.values())).device
        total = torch.zeros(dim, dtype=torch.int64, device=device)
        self.gsm.train()
        for start in range(0, len(images), chunk):
            x = images[start : start + chunk].to(device)
            y = masks[start : start + chunk].to(device)
            per_sample_backward(self.gsm, x, y)
            g = torch.cat([self.named[k].grad_sample.reshape(len(x), -1) for k in keys], dim=1)
            for p in self.named.values():
                p.grad_sample = None
            factor = torch.clamp(clip / (g.norm(dim=1) + 1e-12), max=1.0) * scale
            total += torch.round(g * factor[:, None]).to(torch.int64).sum(dim=0)
        return total.cpu().numpy()

    def noisy_sum(
        self,
        dataset,
        keys: Sequence[str],
        *,
        q: float,
        clip: float,
        scale: float,
        mu_share: float,
        seed: int | None = None,
        rngs: tuple[np.random.Generator, np.random.Generator] | None = None,
        chunk: int = 16,
    ) -> tuple[np.ndarray, dict]:
        """This round's masked-input vector (uint32): the site's rounded clipped gradient sum
        over its Poisson sample plus its Skellam share. Returns (vector, public metrics).
        ``rngs``: the (sampling, noise) generators of a site's ``NoiseSource``; else ``seed``
        seeds both (a simulation: whoever knows the seed knows the share). ``DPConfigError``
        (nothing computed) for parameters out of range."""
        check_round_params(q, clip, scale, mu_share)
        if (seed is None) == (rngs is None):
            raise ValueError("give exactly one of seed and rngs")
        sample_rng, noise_rng = rngs or (
            np.random.default_rng([seed, SAMPLE_STREAM]),
            np.random.default_rng([seed, NOISE_STREAM]),
        )
        start = time.perf_counter()
        n = len(dataset)
        picked = np.flatnonzero(sample_rng.random(n) < q)
        dim = sum(self.named[k].numel() for k in keys)
        if len(picked):
            items = [dataset[int(i)] for i in picked]
            images = torch.stack([torch.as_tensor(it[0]) for it in items]).float()
            masks = torch.stack([torch.as_tensor(it[1]) for it in items]).float()
            with torch.random.fork_rng(devices=[]):
                total = self.clipped_sum(images, masks, keys, clip, scale, chunk)
        else:
            total = np.zeros(dim, np.int64)
        total += skellam(noise_rng, mu_share, dim)
        metrics = {
            "sample_rate": q,
            "max_grad_norm": clip,
            "num_examples": n,
            "train_time_s": time.perf_counter() - start,
        }
        return to_ring(total), metrics


def from_ring_sum(total: np.ndarray, scale: float) -> np.ndarray:
    """The unmasked uint32 sum -> the noisy sum of clipped gradients (float64, gradient units)."""
    if total.dtype != np.uint32:
        raise ValueError(f"expected uint32, got {total.dtype}")
    return total.view(np.int32).astype(np.float64) / scale


class ServerAdam:
    """Adam on the server's model, fed the noisy mean gradient each round (post-processing).

    ``state_dict``/``load_state_dict`` (arrays only) go with the server's checkpoint, so a
    resumed run takes exactly the step it would have taken."""

    def __init__(self, lr: float, betas=(0.9, 0.999), eps: float = 1e-8) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.lr, self.b1, self.b2, self.eps = lr, betas[0], betas[1], eps
        self.t = 0
        self.m: dict[str, np.ndarray] = {}
        self.v: dict[str, np.ndarray] = {}

    def step(self, params: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray]) -> dict:
        self.t += 1
        out = {k: np.array(v, copy=True) for k, v in params.items()}
        c1, c2 = 1 - self.b1**self.t, 1 - self.b2**self.t
        for k, g in grads.items():
            g = np.asarray(g, np.float64)
            m = self.m.get(k, np.zeros_like(g)) * self.b1 + (1 - self.b1) * g
            v = self.v.get(k, np.zeros_like(g)) * self.b2 + (1 - self.b2) * g * g
            self.m[k], self.v[k] = m, v
            upd = self.lr * (m / c1) / (np.sqrt(v / c2) + self.eps)
            out[k] = (np.asarray(params[k], np.float64) - upd).astype(np.asarray(params[k]).dtype)
        return out

    def state_dict(self) -> dict[str, np.ndarray]:
        state = {"t": np.array([self.t], np.int64)}
        state |= {f"m/{k}": v for k, v in self.m.items()} | {f"v/{k}": v for k, v in self.v.items()}
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        self.t = int(np.asarray(state["t"]).reshape(-1)[0])
        self.m = {k[2:]: np.asarray(v) for k, v in state.items() if k.startswith("m/")}
        self.v = {k[2:]: np.asarray(v) for k, v in state.items() if k.startswith("v/")}


def ddp_step(
    opt: ServerAdam,
    current: Mapping[str, np.ndarray],
    noisy_sum: Mapping[str, np.ndarray],
    total_examples: float,
    q: float,
) -> dict:
    """The server's step: the noisy sum over the union divided by its expected size q * sum(n_k)."""
    if not (math.isfinite(total_examples) and total_examples > 0):
        raise ValueError(f"the union's size must be positive, got {total_examples}")
    denom = q * total_examples
    grads = {k: np.asarray(v, np.float64) / denom for k, v in noisy_sum.items()}
    if not all(np.isfinite(g).all() for g in grads.values()):
        raise ValueError("the noisy gradient is not finite")
    return opt.step(current, grads)
