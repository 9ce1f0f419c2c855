"""A site's DP-SGD state for one run: settings, σ, and its privacy accountant.

One accountant per site for the whole run, snapshotted after every round under the site's state
directory (``accountant_round_NNNN.json``, bound to the run id), so neither a client restart nor
a server restart resets ε. A round that is re-run after a server restart starts from the snapshot
before it (same seed, so the same noise: re-running it releases nothing new).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from common.config import Config
from common.io import write_json_atomic
from common.training.dp import (
    PUBLIC_METRIC_KEYS,
    DPSettings,
    DPTrainer,
    PrivacyBudgetExhausted,
    SiteAccountant,
    history_text,
)

log = logging.getLogger(__name__)
__all__ = ["DPState", "PrivacyBudgetExhausted"]


class DPState:
    """The site's DP state for one run: settings, σ, the accountant snapshots, and the DP trainer
    (the model is wrapped for per-sample gradients once, at the first DP round)."""

    def __init__(self, cfg: Config, n_site: int, state_dir: Path, run_id: str) -> None:
        d, t = cfg.dp, cfg.train
        self.settings = DPSettings.from_config(d)
        self.sigma = self.settings.run_sigma(n_site, t.batch_size, t.rounds, t.local_epochs)
        self.cfg, self.dir, self.run_id = cfg, Path(state_dir), run_id
        self.trainer: DPTrainer | None = None
        self.snapshots: dict[int, dict] = {}
        for p in self.dir.glob("accountant_round_*.json"):
            snap = json.loads(p.read_text())
            if snap["run_id"] == run_id:
                self.snapshots[snap["round"]] = snap["accountant"]
        log.info("DP-SGD: sigma %.4f, C %g, delta %g, %s accountant (%d snapshot(s))", self.sigma,
                 d.max_grad_norm, d.delta, d.accountant, len(self.snapshots))  # fmt: skip

    def accountant_before(self, rnd: int) -> SiteAccountant:
        earlier = [r for r in self.snapshots if r < rnd]
        if not earlier:
            return SiteAccountant(self.settings.accountant)
        return SiteAccountant.from_state_dict(self.snapshots[max(earlier)])

    def _save(self, rnd: int, acc: SiteAccountant) -> None:
        self.snapshots[rnd] = acc.state_dict()
        write_json_atomic(
            self.dir / f"accountant_round_{rnd:04d}.json",
            {"run_id": self.run_id, "round": rnd, "accountant": self.snapshots[rnd]},
        )
        for r in sorted(self.snapshots)[:-2]:
            self.snapshots.pop(r)
            (self.dir / f"accountant_round_{r:04d}.json").unlink(missing_ok=True)

    def train(self, model, dataset, rnd: int, config: dict, shared) -> dict:
        """One DP round; returns only the metrics ε covers (no un-noised loss leaves the site)."""
        if self.trainer is None or self.trainer.model is not model:
            self.trainer = DPTrainer(model, self.settings)
        acc = self.accountant_before(rnd)
        try:
            m = self.trainer.train_round(
                dataset, epochs=int(config["local_epochs"]), lr=float(config["lr"]),
                batch_size=int(config["batch_size"]), seed=int(config["seed"]), sigma=self.sigma,
                accountant=acc, proximal_mu=float(config["proximal_mu"]), global_params=shared,
                optimizer=self.cfg.train.optimizer,
            )  # fmt: skip
        finally:
            if acc.steps:  # steps happened (even if the round failed half-way): they count
                self._save(rnd, acc)
        return {**{k: m[k] for k in PUBLIC_METRIC_KEYS if k in m}, "steps_total": acc.steps,
                "accountant_history": history_text(acc)}  # fmt: skip
