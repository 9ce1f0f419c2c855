"""DP-SGD at a site: Opacus per-sample clipping and Gaussian noise, one privacy accountant per site.

What one call of ``dp_train_local`` does (Abadi et al. 2016, the ``dpsgd`` method):

- **Poisson sampling.** Each step includes every slice of the site independently with
  probability q = batch_size / N (Opacus' ``UniformWithReplacementSampler``), so batch sizes vary
  and a batch can be empty (then the step is pure noise, as the accountant assumes). One local
  epoch is ``ceil(N / batch_size)`` steps: the same number of optimizer steps as the non-DP
  loader. Shuffled fixed-size batches would be cheaper, but the accountants assume Poisson and
  would then overstate privacy.
- **Per-sample clipping and noise.** Opacus computes per-sample gradients, clips each one to L2
  norm ``max_grad_norm`` (C), sums them, adds N(0, σ²C²) and divides by the *expected* batch size.
  The loss is ``seg_loss`` (BCE + soft Dice per image, then the batch mean): a per-image loss,
  so one slice's gradient never depends on another slice of the batch.
- **FedProx.** Opacus overwrites ``p.grad`` with the noised sum of per-sample gradients, so a
  proximal term added to the loss is silently dropped (it has no per-sample gradient). Here its
  gradient μ·(w − w_global) is added to the noised gradient after Opacus' clip/noise step and
  before the optimizer step. It depends only on the weights and the global model, never on the
  data, so this is post-processing and costs no privacy.
- **Accounting.** Every noisy step is recorded in the site's ``SiteAccountant`` (RDP by default,
  PRV selectable) as (σ, q, steps). The site keeps ONE accountant for the whole run, persisted
  with ``state_dict`` / ``from_state_dict``: a new accountant per round or per restart would
  report one round's ε (several times too small). ε is per training slice (sample-level DP), at
  ``delta``; the server's aggregate and the released model are post-processing of the sites'
  noisy updates, and each slice lives at one site, so the per-slice guarantee of the final model
  is the largest ε over the sites.
- **Budget.** With ``max_epsilon``, a round whose steps would push ε above the budget is refused
  before any training with ``PrivacyBudgetExhausted``: the site stops contributing and the spent
  ε never exceeds ``max_epsilon``.

The model: DP needs the GroupNorm twin of the U-Net (``build_model(norm="group", groups=...)``)
with no in-place activations. BatchNorm mixes the slices of a batch (no per-sample gradient and
data-dependent running statistics), so a BatchNorm model is refused rather than silently
converted: converting would change the architecture behind the benchmark's back.

FedBN under DP: with GroupNorm there are no running statistics; the normalisation layers'
state is only their affine parameters (per-channel weight and bias), which ``common.model.
norm_keys`` finds by type. FedBN-with-DP therefore means that the GroupNorm affine parameters
stay local at each site (they are still trained with DP-SGD, so they are covered by the same ε)
and every other parameter is averaged.

Per-sample gradients: ``grad_sample_mode="fast"`` (the default) is Opacus' hook-based
``GradSampleModule`` with two extra grad samplers registered on a subclass (no global change to
Opacus): Conv2d and ConvTranspose2d per-sample weight gradients computed as ONE grouped
convolution backward over the batch (groups = batch size × layer groups). Opacus' own conv
sampler unfolds the input (about 10x slower on the U-Net's large layers) and it has no
ConvTranspose2d sampler (it falls back to functorch). ``"hooks"`` and ``"functorch"`` select
Opacus' stock samplers; ``bench/perf/perf_dp.py`` compares them.

Randomness and ``secure_mode``: by default the Poisson sampler and the noise use two
``torch.Generator`` objects seeded from ``seed``, so a round is reproducible on CPU (tests and
the benchmark rely on this). That is a Mersenne-Twister, not a cryptographic generator, and
Opacus' default floating-point noise is open to the attacks of arXiv 2107.10138 / 2112.05307;
fine for a benchmark, not for a deployment that must resist an adversary who sees the updates.
``DPSettings(secure_mode=True)`` makes Opacus draw sampling and noise from ``torchcsprng``
(/dev/urandom) with its attack-resistant noise; runs are then not reproducible, and
``torchcsprng`` currently has no build for Python 3.11 / torch 2.x, so the mode raises a clear
error where it is missing.

What may leave the site: the trained weights (covered by ε) and the keys of
``PUBLIC_METRIC_KEYS``. The training loss and the other diagnostics in the returned metrics are
computed from the private data WITHOUT noise; report them to the server and the ε no longer
covers everything the server sees.
"""

from __future__ import annotations

import functools
import logging
import math
import numbers
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from common.metrics import seg_loss
from common.training.local import OptimizerName, make_optimizer, proximal_anchor, proximal_term

log = logging.getLogger(__name__)

ACCOUNTANTS = ("rdp", "prv")
GRAD_SAMPLE_MODES = ("fast", "hooks", "functorch")
STATE_FORMAT = "fedonco.dp.site_accountant/1"

# Metrics of ``dp_train_local`` that do not depend on the private data beyond what ε covers
# (or are public configuration). Everything else it returns (loss, prox, batch sizes) is a
# local, un-noised diagnostic.
PUBLIC_METRIC_KEYS = (
    "steps",
    "sample_rate",
    "noise_multiplier",
    "max_grad_norm",
    "delta",
    "epsilon",
    "accountant",
    "num_examples",
    "train_time_s",
)


class DPConfigError(ValueError):
    """A DP setting, dataset or model that DP-SGD cannot (or must not) run with."""


class PrivacyBudgetExhausted(RuntimeError):
    """The next round would push the site's ε above ``max_epsilon``: the site stops contributing.

    Raised by ``dp_train_local`` BEFORE any training, so the model and the accountant are
    unchanged. ``epsilon_spent`` is the site's ε so far, ``epsilon_next`` the ε it would have
    after the refused round.
    """

    def __init__(self, epsilon_spent: float, epsilon_next: float, max_epsilon: float, delta: float):
        self.epsilon_spent = epsilon_spent
        self.epsilon_next = epsilon_next
        self.max_epsilon = max_epsilon
        self.delta = delta
        super().__init__(
            f"privacy budget exhausted: epsilon spent {epsilon_spent:.3f}, one more round would "
            f"reach {epsilon_next:.3f} > max_epsilon {max_epsilon:g} (delta={delta:g}); this site "
            f"stops contributing updates"
        )


def _positive_finite(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise DPConfigError(f"{name} must be a number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise DPConfigError(f"{name} must be a finite number > 0, got {value!r}")


@dataclass(frozen=True)
class DPSettings:
    """Privacy parameters of the ``dpsgd`` method (checked on construction).

    Give exactly one of ``noise_multiplier`` (σ) and ``target_epsilon``: with ``target_epsilon``
    set ``noise_multiplier=None`` and call ``resolve_noise_multiplier`` once before training.
    ``max_epsilon`` is a budget after which a site stops contributing (``PrivacyBudgetExhausted``).
    ``secure_mode`` draws sampling and noise from a cryptographic generator (module docstring).
    """

    noise_multiplier: float | None = 1.2
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    accountant: str = "rdp"
    target_epsilon: float | None = None
    max_epsilon: float | None = None
    secure_mode: bool = False

    def __post_init__(self) -> None:
        if self.target_epsilon is None and self.noise_multiplier is None:
            raise DPConfigError(
                "give noise_multiplier (sigma, e.g. 1.2) or target_epsilon (sigma is then "
                "computed for the whole run)"
            )
        if self.target_epsilon is not None and self.noise_multiplier is not None:
            raise DPConfigError(
                f"both noise_multiplier={self.noise_multiplier} and target_epsilon="
                f"{self.target_epsilon} are set; set noise_multiplier=None to let target_epsilon "
                f"choose sigma, or drop target_epsilon"
            )
        if self.noise_multiplier is not None:
            if isinstance(self.noise_multiplier, numbers.Real) and self.noise_multiplier <= 0:
                raise DPConfigError(
                    f"noise_multiplier (sigma) must be > 0, got {self.noise_multiplier}: "
                    f"sigma <= 0 adds no noise and gives no privacy (epsilon = infinity). For a "
                    f"run without DP use the 'groupnorm' method; otherwise use e.g. sigma=1.2"
                )
            _positive_finite("noise_multiplier (sigma)", self.noise_multiplier)
        if isinstance(self.max_grad_norm, numbers.Real) and self.max_grad_norm <= 0:
            raise DPConfigError(
                f"max_grad_norm (C) must be > 0, got {self.max_grad_norm}: it bounds each "
                f"slice's gradient and scales the noise (std = sigma * C); the usual value is 1.0"
            )
        _positive_finite("max_grad_norm (C)", self.max_grad_norm)
        _positive_finite("delta", self.delta)
        if self.delta >= 1:
            raise DPConfigError(f"delta must be < 1 (and < 1/N_site), got {self.delta}")
        if self.accountant not in ACCOUNTANTS:
            raise DPConfigError(f"accountant must be one of {ACCOUNTANTS}, got {self.accountant!r}")
        if self.target_epsilon is not None:
            _positive_finite("target_epsilon", self.target_epsilon)
        if self.max_epsilon is not None:
            _positive_finite("max_epsilon", self.max_epsilon)
        if not isinstance(self.secure_mode, bool):
            raise DPConfigError(f"secure_mode must be true or false, got {self.secure_mode!r}")


def sample_rate_for(n_site: int, batch_size: int) -> float:
    """Poisson sampling rate q = batch_size / N (the expected batch size is batch_size)."""
    return batch_size / n_site


def dp_steps_per_epoch(n_site: int, batch_size: int) -> int:
    """Steps of one local epoch: ceil(N / batch_size), as many as the non-DP loader."""
    return math.ceil(n_site / batch_size)


def validate_dp(settings: DPSettings, n_site: int, batch_size: int) -> None:
    """Refuse a site and batch size that DP-SGD cannot honestly run with."""
    if not isinstance(settings, DPSettings):
        raise DPConfigError(f"expected DPSettings, got {type(settings).__name__}")
    if isinstance(n_site, bool) or not isinstance(n_site, int) or n_site < 1:
        raise DPConfigError(f"the site needs at least one training slice, got N={n_site!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DPConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if batch_size > n_site:
        raise DPConfigError(
            f"batch_size {batch_size} is larger than the site's {n_site} training slices: the "
            f"Poisson sampling rate batch_size/N would exceed 1. Use batch_size <= {n_site}"
        )
    if settings.delta >= 1.0 / n_site:
        raise DPConfigError(
            f"delta={settings.delta:g} must be < 1/N_site = {1.0 / n_site:.3g} (N={n_site}): "
            f"a delta of 1/N allows leaking one whole record. Use delta <= {0.1 / n_site:.1g} "
            f"(e.g. the default 1e-5)"
        )


def resolve_noise_multiplier(
    settings: DPSettings, *, sample_rate: float, steps_total: int
) -> float:
    """σ for the run: ``settings.noise_multiplier``, or the smallest σ (Opacus'
    ``get_noise_multiplier``, binary search to 0.01 in ε) whose ε after ``steps_total`` steps at
    ``sample_rate`` is at most ``target_epsilon``, for ``settings.accountant`` at ``settings.delta``.

    ``steps_total`` = rounds × local_epochs × ``dp_steps_per_epoch(N, batch_size)``. The result
    is deterministic, so a restarted site recomputes the same σ.
    """
    if settings.noise_multiplier is not None:
        return float(settings.noise_multiplier)
    if not (0 < sample_rate <= 1):
        raise DPConfigError(f"sample_rate must be in (0, 1], got {sample_rate}")
    if isinstance(steps_total, bool) or not isinstance(steps_total, int) or steps_total < 1:
        raise DPConfigError(f"steps_total must be a positive integer, got {steps_total!r}")
    from opacus.accountants.utils import get_noise_multiplier

    try:
        sigma = get_noise_multiplier(
            target_epsilon=settings.target_epsilon,
            target_delta=settings.delta,
            sample_rate=sample_rate,
            steps=steps_total,
            accountant=settings.accountant,
            epsilon_tolerance=0.01,
        )
    except ValueError as e:  # Opacus: "The privacy budget is too low."
        raise DPConfigError(
            f"target_epsilon={settings.target_epsilon} is unreachable for {steps_total} steps at "
            f"q={sample_rate:.4g}: {e}. Raise target_epsilon, or train fewer rounds/epochs"
        ) from e
    log.info(
        "target_epsilon %.3g over %d steps at q=%.4g (%s, delta=%g): sigma=%.4f",
        settings.target_epsilon,
        steps_total,
        sample_rate,
        settings.accountant,
        settings.delta,
        sigma,
    )
    return float(sigma)


# ----------------------------------------------------------------------------------------------
# the site's accountant
# ----------------------------------------------------------------------------------------------


def _opacus_accountant(mechanism: str, history: Sequence[tuple[float, float, int]]):
    from opacus.accountants import create_accountant

    acc = create_accountant(mechanism=mechanism)
    acc.history = [(float(s), float(q), int(n)) for s, q, n in history]
    return acc


class SiteAccountant:
    """The privacy accountant of one site for the whole run.

    ``history`` is a list of (noise_multiplier, sample_rate, steps); consecutive steps with the
    same σ and q are merged (as Opacus' own accountants do). ε is computed by Opacus' RDP or PRV
    accountant from this history, so it equals what Opacus reports for the same steps. Persist
    ``state_dict()`` (JSON) with the site's checkpoint after every round and restore it with
    ``from_state_dict``: never start a fresh accountant for a round or after a restart.
    """

    def __init__(self, mechanism: str = "rdp") -> None:
        if mechanism not in ACCOUNTANTS:
            raise DPConfigError(f"accountant must be one of {ACCOUNTANTS}, got {mechanism!r}")
        self.mechanism = mechanism
        self.history: list[tuple[float, float, int]] = []

    def record(self, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Add ``steps`` noisy steps at (σ, q)."""
        _positive_finite("noise_multiplier", noise_multiplier)
        if not (0 < sample_rate <= 1):
            raise DPConfigError(f"sample_rate must be in (0, 1], got {sample_rate}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise DPConfigError(f"steps must be a non-negative integer, got {steps!r}")
        if steps == 0:
            return
        s, q = float(noise_multiplier), float(sample_rate)
        if self.history and self.history[-1][:2] == (s, q):
            self.history[-1] = (s, q, self.history[-1][2] + steps)
        else:
            self.history.append((s, q, steps))

    @property
    def steps(self) -> int:
        return sum(n for _, _, n in self.history)

    def epsilon(self, delta: float) -> float:
        """ε spent so far at ``delta`` (0.0 before the first step)."""
        return self._epsilon(self.history, delta)

    def projected_epsilon(
        self, delta: float, noise_multiplier: float, sample_rate: float, steps: int
    ) -> float:
        """ε after ``steps`` more steps at (σ, q), without recording them."""
        probe = SiteAccountant(self.mechanism)
        probe.history = list(self.history)
        probe.record(noise_multiplier, sample_rate, steps)
        return self._epsilon(probe.history, delta)

    def _epsilon(self, history: Sequence[tuple[float, float, int]], delta: float) -> float:
        _positive_finite("delta", delta)
        if not history:
            return 0.0
        return float(_opacus_accountant(self.mechanism, history).get_epsilon(delta=delta))

    def state_dict(self) -> dict:
        """JSON-serialisable state: the mechanism and the (σ, q, steps) history."""
        return {
            "format": STATE_FORMAT,
            "mechanism": self.mechanism,
            "history": [[s, q, n] for s, q, n in self.history],
        }

    @classmethod
    def from_state_dict(cls, state: Mapping) -> SiteAccountant:
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            raise DPConfigError(
                f"not a site accountant state (expected format {STATE_FORMAT!r}): {state!r:.200}"
            )
        acc = cls(state.get("mechanism"))
        history = state.get("history")
        if not isinstance(history, list):
            raise DPConfigError("site accountant state: 'history' must be a list")
        for entry in history:
            if not (isinstance(entry, (list, tuple)) and len(entry) == 3):
                raise DPConfigError(f"site accountant state: bad history entry {entry!r}")
            s, q, n = entry
            acc.record(float(s), float(q), int(n))
        return acc

    def __repr__(self) -> str:
        return f"SiteAccountant({self.mechanism!r}, steps={self.steps}, history={self.history})"


# ----------------------------------------------------------------------------------------------
# per-sample gradients
# ----------------------------------------------------------------------------------------------


def _conv_weight_grad_sample(
    layer: nn.Conv2d | nn.ConvTranspose2d, x: torch.Tensor, gy: torch.Tensor
) -> torch.Tensor:
    """Per-sample weight gradients (B, *weight.shape) as one grouped convolution backward.

    Sample b's input channels and output channels form their own groups, so the weight gradient
    of the grouped convolution holds each sample's gradient separately: the same kernel as the
    ordinary weight gradient, without Opacus' unfold of the input.
    """
    b = x.shape[0]
    w = layer.weight
    transposed = isinstance(layer, nn.ConvTranspose2d)
    output_padding = [0, 0]
    if transposed:  # recover it from the shapes (forward may have been given output_size)
        for i in range(2):
            base = (
                (x.shape[2 + i] - 1) * layer.stride[i]
                - 2 * layer.padding[i]
                + layer.dilation[i] * (layer.kernel_size[i] - 1)
                + 1
            )
            output_padding[i] = gy.shape[2 + i] - base
    weight_shape = (b * w.shape[0], *w.shape[1:])
    _, grad_w, _ = torch.ops.aten.convolution_backward(
        gy.reshape(1, -1, *gy.shape[2:]),
        x.reshape(1, -1, *x.shape[2:]),
        w.new_empty(weight_shape),  # only its shape is read when just the weight grad is asked
        None,
        list(layer.stride),
        list(layer.padding),
        list(layer.dilation),
        transposed,
        output_padding,
        layer.groups * b,
        [False, True, False],
    )
    return grad_w.view(b, *w.shape)


def _fast_conv_grad_sample(
    layer: nn.Module, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    from opacus.grad_sample.conv import compute_conv_grad_sample
    from opacus.grad_sample.functorch import ft_compute_per_sample_gradient

    x = activations[0].to(backprops.dtype)
    plain = isinstance(layer.padding, tuple) and layer.padding_mode == "zeros"
    if not plain or x.dim() != 4:  # string padding, non-zero padding modes: Opacus' samplers
        if isinstance(layer, nn.ConvTranspose2d):
            return ft_compute_per_sample_gradient(layer, activations, backprops)
        return compute_conv_grad_sample(layer, activations, backprops)
    out: dict[nn.Parameter, torch.Tensor] = {}
    if layer.weight.requires_grad:
        out[layer.weight] = _conv_weight_grad_sample(layer, x, backprops)
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = backprops.sum(dim=(2, 3))
    return out


@functools.cache
def _grad_sample_module_cls(mode: str):
    from opacus.grad_sample import GradSampleModule

    if mode in ("hooks", "functorch"):
        return GradSampleModule

    class FastConvGradSampleModule(GradSampleModule):
        """Opacus' GradSampleModule with grouped-convolution samplers for 2-D (transposed) convs."""

        GRAD_SAMPLERS = {
            **GradSampleModule.GRAD_SAMPLERS,
            nn.Conv2d: _fast_conv_grad_sample,
            nn.ConvTranspose2d: _fast_conv_grad_sample,
        }

    return FastConvGradSampleModule


def make_grad_sample_module(model: nn.Module, grad_sample_mode: str = "fast"):
    """Wrap ``model`` (no copy: the wrapper shares its parameters) to compute ``p.grad_sample``.

    Built with ``loss_reduction="sum"``: feed it through ``per_sample_backward``. The wrapper's
    own state_dict keys carry Opacus' ``_module.`` prefix; ``model``'s do not. Call
    ``release_grad_sample_module`` to remove every hook and attribute afterwards.
    """
    if grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise DPConfigError(
            f"grad_sample_mode must be one of {GRAD_SAMPLE_MODES}, got {grad_sample_mode!r}"
        )
    cls = _grad_sample_module_cls(grad_sample_mode)
    return cls(
        model,
        batch_first=True,
        loss_reduction="sum",
        strict=True,
        force_functorch=grad_sample_mode == "functorch",
    )


def per_sample_backward(gsm, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Forward and backward that fill ``p.grad_sample``; returns the batch's mean loss (detached).

    ``p.grad_sample[i]`` is the gradient of image i's own ``seg_loss``. Two things make this
    cheaper than Opacus' usual recipe, with identical results (tested):

    - the wrapper has ``loss_reduction="sum"`` and gets the SUM of the per-image losses, so the
      per-sample gradients need no rescaling (with a mean loss Opacus multiplies every layer's
      output gradient by the batch size, one extra pass per layer). The DPOptimizer still
      divides the clipped, noised sum by the EXPECTED batch size (its ``loss_reduction="mean"``);
    - ``backward(inputs=[images])`` asks autograd only for gradients that flow to the input:
      the per-sample hooks see every layer's output gradient, but the ordinary weight gradients,
      which the DPOptimizer would overwrite anyway, are never computed.
    """
    images = images.detach().requires_grad_(True)
    losses = seg_loss(gsm(images), masks, reduction="none")
    total = losses.sum()
    if not torch.isfinite(total):
        raise FloatingPointError("non-finite loss: lower the lr")
    total.backward(inputs=[images])
    return total.detach() / images.shape[0]


def release_grad_sample_module(gsm, params: Sequence[nn.Parameter]) -> None:
    """Undo ``make_grad_sample_module`` and the DPOptimizer's per-parameter attributes."""
    gsm.to_standard_module()  # removes hooks, grad_sample, functorch helpers
    for module in gsm._module.modules():  # activations captured by a forward without backward
        for attr in ("activations", "max_batch_len"):
            if hasattr(module, attr):
                delattr(module, attr)
    for p in params:
        for attr in ("grad_sample", "summed_grad", "_forward_counter", "_current_grad_sample"):
            if hasattr(p, attr):
                delattr(p, attr)
        p.grad = None


def check_dp_model(model: nn.Module) -> None:
    """Refuse models DP-SGD cannot train honestly: BatchNorm, in-place activations, buffers."""
    bn = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if bn:
        raise DPConfigError(
            f"DP-SGD cannot train BatchNorm (it mixes the slices of a batch, so there is no "
            f"per-sample gradient, and its running statistics are un-noised data): {bn[:3]}. "
            f"Build the GroupNorm twin: build_model(base, norm='group', groups=...)"
        )
    inplace = [n for n, m in model.named_modules() if getattr(m, "inplace", False) is True]
    if inplace:
        raise DPConfigError(
            f"in-place activations break Opacus' per-sample gradient hooks (opacus#828): "
            f"{inplace[:3]}; construct them with inplace=False"
        )
    from opacus.validators import ModuleValidator

    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise DPConfigError(f"model not supported by Opacus: {errors}")


# ----------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------


def _generators(
    seed: int, secure_mode: bool, device: torch.device
) -> tuple[torch.Generator, torch.Generator]:
    """(sampling on CPU, noise on the model's device): seeded per (seed, purpose), or
    /dev/urandom in secure_mode."""
    if secure_mode:
        try:
            import torchcsprng as csprng
        except ImportError as e:
            raise DPConfigError(
                "secure_mode needs the torchcsprng package, which has no build for Python "
                "3.11 / torch 2.x. Run with secure_mode=False (the benchmark default: seeded, "
                "reproducible, not cryptographically secure noise), or install torchcsprng"
            ) from e
        rng = csprng.create_random_device_generator("/dev/urandom")
        return rng, rng
    seeds = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 0x0D9]).generate_state(2, np.uint64)
    sampling = torch.Generator().manual_seed(int(seeds[0]) >> 1)
    noise = torch.Generator(device=device).manual_seed(int(seeds[1]) >> 1)
    return sampling, noise


def _poisson_batches(
    dataset, sample_rate: float, steps: int, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor] | None]:
    """``steps`` Poisson batches as (images, masks); None for an empty batch."""
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    sampler = UniformWithReplacementSampler(
        num_samples=len(dataset), sample_rate=sample_rate, generator=generator, steps=steps
    )
    for indices in sampler:
        if not indices:
            yield None
            continue
        items = [dataset[i] for i in indices]
        images = torch.stack([torch.as_tensor(it[0]) for it in items]).float()
        masks = torch.stack([torch.as_tensor(it[1]) for it in items]).float()
        yield images, masks


def dp_train_local(
    model: nn.Module,
    dataset,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    settings: DPSettings,
    sigma: float,
    accountant: SiteAccountant,
    proximal_mu: float = 0.0,
    global_params: Mapping[str, np.ndarray] | None = None,
    optimizer: OptimizerName = "adam",
    grad_sample_mode: str = "fast",
) -> dict:
    """One round of DP-SGD at a site: trains ``model`` in place and updates ``accountant``.

    ``dataset[i]`` is (image (1, H, W), mask (1, H, W)); ``sigma`` is the σ of the run
    (``resolve_noise_multiplier``); ``accountant`` is the site's persistent accountant (its
    mechanism must be ``settings.accountant``). FedProx: ``proximal_mu`` > 0 pulls towards
    ``global_params`` (default: the weights at the start of the call), applied after the noise.
    Deterministic on CPU for a ``seed`` (unless ``settings.secure_mode``); the caller's global
    torch RNG is left as it was.

    Raises ``DPConfigError`` for bad settings or models and ``PrivacyBudgetExhausted`` (before
    training; nothing changed) when this round would exceed ``settings.max_epsilon``. Returns
    metrics: ``PUBLIC_METRIC_KEYS`` (ε after this round at ``settings.delta``, steps, q, σ, ...)
    plus local diagnostics (loss, prox, mean/min/max batch size, empty_batches) that are not
    covered by ε.
    """
    start = time.perf_counter()
    if not isinstance(settings, DPSettings):
        raise DPConfigError(f"settings must be DPSettings, got {type(settings).__name__}")
    n = len(dataset)
    validate_dp(settings, n, batch_size)
    _positive_finite("sigma (noise_multiplier)", sigma)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise DPConfigError(f"epochs must be a positive integer, got {epochs!r}")
    if proximal_mu < 0:
        raise DPConfigError(f"proximal_mu must be >= 0, got {proximal_mu}")
    if accountant.mechanism != settings.accountant:
        raise DPConfigError(
            f"the site's accountant is {accountant.mechanism!r} but settings.accountant is "
            f"{settings.accountant!r}; keep one mechanism for the whole run"
        )
    check_dp_model(model)

    q = sample_rate_for(n, batch_size)
    steps = epochs * dp_steps_per_epoch(n, batch_size)
    delta = settings.delta
    if settings.max_epsilon is not None:
        eps_next = accountant.projected_epsilon(delta, sigma, q, steps)
        if eps_next > settings.max_epsilon:
            raise PrivacyBudgetExhausted(
                accountant.epsilon(delta), eps_next, settings.max_epsilon, delta
            )
    device = next(model.parameters()).device
    sampling_gen, noise_gen = _generators(seed, settings.secure_mode, device)

    from opacus.optimizers import DPOptimizer

    was_training = model.training
    anchor = None
    if proximal_mu > 0:
        anchor = {k: v.to(device) for k, v in proximal_anchor(model, global_params).items()}
    params = [p for p in model.parameters() if p.requires_grad]
    seg_sum, prox_sum, batches, seen, empty, sizes = 0.0, 0.0, 0, 0, 0, []
    gsm = make_grad_sample_module(model, grad_sample_mode)
    try:
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG.*")
            torch.manual_seed(seed)
            gsm.forbid_grad_accumulation()
            gsm.train()
            dp_opt = DPOptimizer(
                make_optimizer(model, optimizer, lr),
                noise_multiplier=sigma,
                max_grad_norm=settings.max_grad_norm,
                expected_batch_size=batch_size,
                loss_reduction="mean",
                generator=noise_gen,
                secure_mode=settings.secure_mode,
            )
            # Opacus calls this after each clip+noise: every noisy step is accounted as it
            # happens, so even a round that fails half-way is never under-counted.
            dp_opt.attach_step_hook(lambda _opt: accountant.record(sigma, q, 1))
            for epoch in range(epochs):
                last_epoch = epoch == epochs - 1
                for batch in _poisson_batches(dataset, q, steps // epochs, sampling_gen):
                    dp_opt.zero_grad(set_to_none=True)
                    if batch is None:  # empty Poisson batch: the step is noise only
                        for p in params:
                            p.grad_sample = p.new_zeros((0, *p.shape))
                        size = 0
                    else:
                        images, masks = (t.to(device) for t in batch)
                        loss = per_sample_backward(gsm, images, masks)
                        size = int(images.shape[0])
                        if last_epoch:
                            seg_sum += float(loss.detach())
                            batches += 1
                    if not dp_opt.pre_step():  # clip, noise, scale; accountant hook
                        raise RuntimeError("Opacus skipped a DP step unexpectedly")
                    if anchor is not None:
                        with torch.no_grad():
                            for name, p in model.named_parameters():
                                if name in anchor:
                                    p.grad.add_(p.detach() - anchor[name], alpha=proximal_mu)
                            if last_epoch:
                                prox_sum += float(proximal_term(model, anchor, proximal_mu))
                    dp_opt.original_optimizer.step()
                    if last_epoch:
                        seen += size
                    sizes.append(size)
                    empty += size == 0
    finally:
        release_grad_sample_module(gsm, params)
        model.train(was_training)

    epsilon = accountant.epsilon(delta)
    if settings.max_epsilon is not None:
        log.info("epsilon %.3f of max_epsilon %g (delta=%g)", epsilon, settings.max_epsilon, delta)
    last_steps = steps // epochs
    return {
        "loss": seg_sum / batches if batches else float("nan"),
        "prox": prox_sum / last_steps if anchor is not None else 0.0,
        "steps": steps,
        "sample_rate": q,
        "noise_multiplier": float(sigma),
        "max_grad_norm": float(settings.max_grad_norm),
        "delta": delta,
        "epsilon": epsilon,
        "accountant": accountant.mechanism,
        "num_examples": n,
        "examples_last_epoch": seen,
        "empty_batches": empty,
        "batch_size_mean": float(np.mean(sizes)),
        "batch_size_min": int(min(sizes)),
        "batch_size_max": int(max(sizes)),
        "train_time_s": time.perf_counter() - start,
    }
