"""One round of DP-SGD at a site: Poisson batches, per-sample clipping and noise, accounting."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from common.seeds import dp_generator_seeds
from common.training.dp.accountant import SiteAccountant
from common.training.dp.grad_sample import (
    check_dp_model,
    make_grad_sample_module,
    per_sample_backward,
    release_grad_sample_module,
)
from common.training.dp.settings import (
    DPConfigError,
    DPSettings,
    PrivacyBudgetExhausted,
    _positive_finite,
    dp_steps_per_epoch,
    sample_rate_for,
    validate_dp,
)
from common.training.local import OptimizerName, make_optimizer, proximal_anchor, proximal_term

log = logging.getLogger(__name__)


def _generators(
    seed: int, device: torch.device, generator_seeds: tuple[int, int] | None = None
) -> tuple[torch.Generator, torch.Generator]:
    """(sampling on CPU, noise on the model's device): from ``generator_seeds`` (a site's
    ``NoiseSource``: docs/dp.md, "Randomness"), else derived from ``seed`` (a simulation: whoever
    knows the seed knows the noise). Opacus draws the noise with this generator on the
    parameters' device, so on CUDA it is a CUDA generator (Philox) seeded with the same 63-bit
    seed: the same construction, another stream than the CPU's Mersenne Twister. The Poisson
    sample is drawn on the CPU either way."""
    sampling_seed, noise_seed = generator_seeds or dp_generator_seeds(seed)
    sampling = torch.Generator().manual_seed(sampling_seed)
    noise = torch.Generator(device=device).manual_seed(noise_seed)
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


class DPTrainer:
    """DP-SGD for one model over a whole run.

    The model is wrapped once (Opacus' ``GradSampleModule``, sharing its parameters, so
    ``set_params`` on the model between rounds is seen by the wrapper); each ``train_round`` is
    one round with a fresh optimizer (as at a non-DP site). ``close`` unwraps the model.
    """

    def __init__(self, model: nn.Module, settings: DPSettings, grad_sample_mode: str = "fast"):
        if not isinstance(settings, DPSettings):
            raise DPConfigError(f"settings must be DPSettings, got {type(settings).__name__}")
        check_dp_model(model)
        self.model, self.settings = model, settings
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.gsm = make_grad_sample_module(model, grad_sample_mode)
        self.gsm.forbid_grad_accumulation()

    def close(self) -> None:
        release_grad_sample_module(self.gsm, self.params)

    def train_round(
        self,
        dataset,
        *,
        epochs: int,
        lr: float,
        batch_size: int,
        seed: int,
        sigma: float,
        accountant: SiteAccountant,
        proximal_mu: float = 0.0,
        global_params: Mapping[str, np.ndarray] | None = None,
        optimizer: OptimizerName = "adam",
        generator_seeds: tuple[int, int] | None = None,
        grad_hook: Callable[[], None] | None = None,
    ) -> dict:
        """One round of DP-SGD at a site: trains the model in place and updates ``accountant``.

        ``dataset[i]`` is (image (1, H, W), mask (1, H, W)); ``sigma`` is the σ of the run
        (``resolve_noise_multiplier``); ``accountant`` is the site's persistent accountant (its
        mechanism must be ``settings.accountant``). FedProx: ``proximal_mu`` > 0 pulls towards
        ``global_params`` (default: the weights at the start of the call); its gradient is added
        in Opacus' step hook, after the noise. ``generator_seeds``: the (sampling, noise) seeds of
        a site's secret randomness; without them both derive from ``seed`` (a simulation).
        ``grad_hook`` runs on each noisy gradient, before FedProx's term and the optimizer step
        (SCAFFOLD's correction: post-processing, no privacy cost). Deterministic on CPU for given seeds; the caller's global torch RNG is left as it was.

        Raises ``DPConfigError`` for bad settings and ``PrivacyBudgetExhausted`` (before
        training; nothing changed) when this round would exceed ``settings.max_epsilon``.
        Returns ``PUBLIC_METRIC_KEYS`` (ε after this round at ``settings.delta``, steps, q, σ,
        ...) plus local diagnostics (loss, prox, mean/min/max batch size, empty_batches) that
        are not covered by ε.
        """
        start = time.perf_counter()
        settings, model = self.settings, self.model
        n = len(dataset)
        validate_dp(settings, n, batch_size)
        _positive_finite("sigma (noise_multiplier)", sigma)
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise DPConfigError(f"epochs must be a positive integer, got {epochs!r}")
        if proximal_mu < 0:
            raise DPConfigError(f"proximal_mu must be >= 0, got {proximal_mu}")
        if (accountant.mechanism, accountant.adjacency) != (
            settings.accountant,
            settings.adjacency,
        ):
            raise DPConfigError(
                f"the site's accountant is {accountant.mechanism!r} ({accountant.adjacency}) but "
                f"the settings say {settings.accountant!r} ({settings.adjacency}); keep one "
                "mechanism and one neighbouring relation for the whole run"
            )
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
        sampling_gen, noise_gen = _generators(seed, device, generator_seeds)

        from opacus.optimizers import DPOptimizer

        was_training = model.training
        anchor = None
        if proximal_mu > 0:
            anchor = proximal_anchor(model, global_params)  # on the parameters' device
        log_ = {"seg": 0.0, "prox": 0.0, "batches": 0, "last_epoch": False}

        def after_noise(_opt) -> None:
            """Opacus calls this after each clip + noise, before the optimizer step: every
            noisy step is accounted as it happens (a round that fails half-way is never
            under-counted), and FedProx's gradient mu·(w − w_global), which touches no data,
            is added to the noised gradient (post-processing: no privacy cost)."""
            accountant.record(sigma, q, 1)
            if grad_hook is not None:
                grad_hook()
            if anchor is None:
                return
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if name in anchor:
                        p.grad.add_(p.detach() - anchor[name], alpha=proximal_mu)
                if log_["last_epoch"]:
                    log_["prox"] += float(proximal_term(model, anchor, proximal_mu))

        seen, empty, sizes = 0, 0, []
        try:
            with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG.*")
                torch.manual_seed(seed)
                self.gsm.train()
                dp_opt = DPOptimizer(
                    make_optimizer(model, optimizer, lr),
                    noise_multiplier=sigma,
                    max_grad_norm=settings.max_grad_norm,
                    expected_batch_size=batch_size,
                    loss_reduction="mean",
                    generator=noise_gen,
                )
                dp_opt.attach_step_hook(after_noise)
                for epoch in range(epochs):
                    log_["last_epoch"] = epoch == epochs - 1
                    for batch in _poisson_batches(dataset, q, steps // epochs, sampling_gen):
                        dp_opt.zero_grad(set_to_none=True)
                        if batch is None:  # empty Poisson batch: the step is noise only
                            for p in self.params:
                                p.grad_sample = p.new_zeros((0, *p.shape))
                            size = 0
                        else:
                            images, masks = (t.to(device) for t in batch)
                            loss = per_sample_backward(self.gsm, images, masks)
                            size = int(images.shape[0])
                            if log_["last_epoch"]:
                                log_["seg"] += float(loss.detach())
                                log_["batches"] += 1
                        dp_opt.step()  # clip, noise, scale; the hook above; the Adam/SGD step
                        if log_["last_epoch"]:
                            seen += size
                        sizes.append(size)
                        empty += size == 0
                dp_opt.zero_grad(set_to_none=True)
        finally:
            model.train(was_training)

        epsilon = accountant.epsilon(delta)
        if settings.max_epsilon is not None:
            log.info(
                "epsilon %.3f of max_epsilon %g (delta=%g)", epsilon, settings.max_epsilon, delta
            )
        last_steps = steps // epochs
        batches = log_["batches"]
        return {
            "loss": log_["seg"] / batches if batches else float("nan"),
            "prox": log_["prox"] / last_steps if anchor is not None else 0.0,
            "steps": steps,
            "sample_rate": q,
            "noise_multiplier": float(sigma),
            "max_grad_norm": float(settings.max_grad_norm),
            "delta": delta,
            "epsilon": epsilon,
            "accountant": accountant.mechanism,
            "adjacency": accountant.adjacency,
            "num_examples": n,
            "examples_last_epoch": seen,
            "empty_batches": empty,
            "batch_size_mean": float(np.mean(sizes)),
            "batch_size_min": int(min(sizes)),
            "batch_size_max": int(max(sizes)),
            "train_time_s": time.perf_counter() - start,
        }


def dp_train_local(
    model: nn.Module,
    dataset,
    *,
    settings: DPSettings,
    grad_sample_mode: str = "fast",
    **round_kwargs,
) -> dict:
    """One round of DP-SGD with a wrapper made (and removed) for this call: ``DPTrainer`` for
    one-off callers. A run of several rounds keeps one ``DPTrainer`` instead."""
    trainer = DPTrainer(model, settings, grad_sample_mode)
    try:
        return trainer.train_round(dataset, **round_kwargs)
    finally:
        trainer.close()
