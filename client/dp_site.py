"""A site's DP-SGD state for one run: settings, σ, its privacy accountant and its randomness.

One accountant per site for the whole run, saved after every round under the site's state
directory (``dp_accountant.json``, bound to the run id, 0600), so neither a client restart nor a
server restart resets ε. It never goes back: a round re-run after a server restart is a second
release (fresh randomness: ``AttemptLog``), and both are counted.

The Poisson sample and the noise come from the site's ``NoiseSource`` (docs/dp.md,
"Randomness"): its secret key, or in a seeded simulation the run's public seed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from common.config import Config
from common.fl.instructions import FitInstructions
from common.io import PRIVATE, write_bytes_atomic
from common.training.dp import (
    PUBLIC_METRIC_KEYS,
    DPSettings,
    DPTrainer,
    PrivacyBudgetExhausted,
    SiteAccountant,
    history_text,
)
from common.training.dp.randomness import AttemptLog, NoiseSource

log = logging.getLogger(__name__)
__all__ = ["DPState", "PrivacyBudgetExhausted"]


class DPState:
    """The site's DP state for one run: settings, σ, the accountant, the randomness, and the DP
    trainer (the model is wrapped for per-sample gradients once, at the first DP round)."""

    def __init__(
        self,
        cfg: Config,
        n_site: int,
        state_dir: Path,
        run_id: str,
        noise: NoiseSource,
        attempts: AttemptLog,
    ) -> None:
        d, t = cfg.dp, cfg.train
        self.settings = DPSettings.from_config(d)
        self.sigma = self.settings.run_sigma(n_site, t.batch_size, t.rounds, t.local_epochs)
        self.cfg, self.dir, self.run_id, self.noise = cfg, Path(state_dir), run_id, noise
        self.trainer: DPTrainer | None = None
        self.attempts = attempts
        self.path = self.dir / "dp_accountant.json"
        self.accountant = SiteAccountant(self.settings.accountant, self.settings.adjacency)
        if self.path.exists():
            saved = json.loads(self.path.read_text())
            if saved.get("run_id") == run_id:
                self.accountant = SiteAccountant.from_state_dict(saved["accountant"])
        log.info(
            "DP-SGD: sigma %.4f, C %g, delta %g, %s accountant (%s), %s randomness, %d step(s) "
            "so far",
            self.sigma,
            d.max_grad_norm,
            d.delta,
            d.accountant,
            d.adjacency,
            noise.mode,
            self.accountant.steps,
        )

    def _save(self) -> None:
        text = json.dumps({"run_id": self.run_id, "accountant": self.accountant.state_dict()})
        write_bytes_atomic(self.path, text.encode(), PRIVATE)

    def train(self, model, dataset, orders: FitInstructions, shared, grad_hook=None) -> dict:
        """One DP round; returns only the metrics ε covers (no un-noised loss leaves the site).
        ``grad_hook``: SCAFFOLD's correction, run on each noisy gradient."""
        if self.trainer is None or self.trainer.model is not model:
            self.trainer = DPTrainer(model, self.settings)
        acc, before, rnd = self.accountant, self.accountant.steps, orders.round
        attempt = self.attempts.next(rnd)  # recorded before anything is drawn
        seeds = self.noise.dp_seeds(rnd, attempt)
        try:
            m = self.trainer.train_round(
                dataset,
                epochs=orders.local_epochs,
                lr=orders.lr,
                batch_size=orders.batch_size,
                seed=orders.seed,
                sigma=self.sigma,
                accountant=acc,
                proximal_mu=orders.proximal_mu,
                global_params=shared,
                optimizer=self.cfg.train.optimizer,
                generator_seeds=seeds,
                grad_hook=grad_hook,
            )
        finally:
            if (
                acc.steps != before
            ):  # steps happened (even if the round failed half-way): they count
                self._save()
        if attempt > 1:
            log.warning(
                "round %d re-run (attempt %d): fresh randomness, and epsilon counts every attempt",
                rnd,
                attempt,
            )
        return {
            **{k: m[k] for k in PUBLIC_METRIC_KEYS if k in m},
            "steps_total": acc.steps,
            "accountant_history": history_text(acc),
            "attempt": attempt,
            "randomness": self.noise.mode,
        }
