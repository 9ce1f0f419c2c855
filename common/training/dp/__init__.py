"""DP-SGD at a site: Opacus per-sample clipping and Gaussian noise, one accountant per site.

- ``settings``: ``DPSettings`` (σ or a target ε, C, δ, accountant, budget) and their checks;
- ``accountant``: ``SiteAccountant``, the site's accountant for the whole run (persisted);
- ``grad_sample``: Opacus' per-sample gradients around the model, and the model checks;
- ``loop``: ``DPTrainer``, one round of DP-SGD (Poisson batches, clip, noise, account).

The design and its reasons (Poisson sampling, FedProx under DP, budgets, secure mode, what may
leave the site) are in ``docs/dp.md``.
"""

from common.training.dp.accountant import SiteAccountant, history_from_text, history_text
from common.training.dp.grad_sample import (
    GRAD_SAMPLE_MODES,
    check_dp_model,
    make_grad_sample_module,
    per_sample_backward,
    release_grad_sample_module,
)
from common.training.dp.loop import DPTrainer, dp_train_local
from common.training.dp.settings import (
    ACCOUNTANTS,
    PUBLIC_METRIC_KEYS,
    DPConfigError,
    DPSettings,
    PrivacyBudgetExhausted,
    dp_steps_per_epoch,
    resolve_noise_multiplier,
    sample_rate_for,
    validate_dp,
)

__all__ = [
    "ACCOUNTANTS",
    "GRAD_SAMPLE_MODES",
    "PUBLIC_METRIC_KEYS",
    "DPConfigError",
    "DPSettings",
    "DPTrainer",
    "PrivacyBudgetExhausted",
    "SiteAccountant",
    "check_dp_model",
    "dp_steps_per_epoch",
    "dp_train_local",
    "history_from_text",
    "history_text",
    "make_grad_sample_module",
    "per_sample_backward",
    "release_grad_sample_module",
    "resolve_noise_multiplier",
    "sample_rate_for",
    "validate_dp",
]
