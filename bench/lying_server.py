"""A lying server in front of real site processes: the malicious aggregator at process level.

``attacks/aggregator.py`` plays the server of one round in process against the site code itself
(``common.secagg.SecAggClient``). Here the server is the project's real one (``server.app.Server``
under ``serve_campaign``: the gRPC service `fedonco server` runs), deviating in one round, so the
sites it meets are whatever answers on its port; in ``tests/integration/test_lying_server.py``,
real `fedonco client` processes. It lives in ``bench`` because it is built from the server and an
attack's crafted model (the roles do not import each other).

  dropout-lie  at the consistency stage every site is shown the survivor set {itself, victim}, the
               others "dropped": sites that confirmed it would answer the unmask stage with the
               victim's self-mask share and the other sites' mask-key shares, from which the
               server strips the victim's masked input.
  model-split  the victim is sent the global model, every other site ``dead_model`` of it (no
               ReLU fires; local training moves nothing but the head's bias), so the sum the
               server unmasks by the book, minus what it sent the others, is the victim's own
               weighted model.

``LyingServer(..., lies={round: attack}, victim=...)`` lies in each of those rounds and is honest
in the others; ``outcomes[round]`` is what the server got from that round: whether it aborted,
why each site left it, and for ``model-split`` the victim's model read off the sum and how far it is from the
model the victim was sent (``max_change``: a model trained for one round from it moves by well
under 1; a sum whose masks did not cancel is uniform noise over the quantisation ring, ~1e3+).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from attacks.aggregator import dead_model
from common.model import model_for, set_params
from common.wire.serde import ndarrays_to_proto
from server.app import Server
from server.records import ConsistencyStage, TaskKind, UnmaskStage

log = logging.getLogger(__name__)

ATTACKS = ("dropout-lie", "model-split", "trap")


@dataclass
class Outcome:
    attack: str
    victim: str
    aborted: str | None = None
    failures: dict[str, str] = field(default_factory=dict)  # site -> why it left the round
    revealed: dict[str, int] = field(default_factory=dict)  # site -> shares it handed over
    max_change: float | None = None  # model-split: max |victim's model read off - model sent|

    @property
    def isolated(self) -> bool:
        """The server read a trained model off the sum: the victim's, alone."""
        return self.max_change is not None and self.max_change < 1.0


class LyingServer(Server):
    """``Server`` that lies in the rounds of ``lies`` (round -> one of ATTACKS) to ``victim``."""

    def __init__(self, cfg, method, data_dir, *args, lies: dict[int, str], victim: str, **kwargs):
        bad = sorted(set(lies.values()) - set(ATTACKS))
        if bad:
            raise ValueError(f"attacks {bad}: each one of {', '.join(ATTACKS)}")
        super().__init__(cfg, method, data_dir, *args, **kwargs)
        self.data_dir = data_dir  # the trap's public slices: the attacker pool
        if not self.cfg.secagg.enabled:
            raise ValueError("the lying server attacks secure aggregation: enable it")
        self.lies, self.victim = dict(lies), victim
        self.outcomes = {rnd: Outcome(attack, victim) for rnd, attack in self.lies.items()}
        self._honest_run_phase = self.state.run_phase
        self.state.run_phase = self._run_phase
        self._sent: dict[str, np.ndarray] = {}
        self._counts: dict[str, int] = {}

    def _run_phase(self, kind, rnd, configs, payload, spec, timeout, payloads=None):
        attack = self.lies.get(rnd)
        if attack:
            payloads = self._lie(attack, rnd, kind, configs, payload, payloads)
        results, failures = self._honest_run_phase(
            kind, rnd, configs, payload, spec, timeout, payloads
        )
        if attack:
            self.outcomes[rnd].failures.update(failures)
            if kind == TaskKind.ADVERTISE_KEYS:
                self._counts = {s: a.num_examples for s, a in results.items()}
            if kind == TaskKind.UNMASK:
                self.outcomes[rnd].revealed = {s: len(r.shares) for s, r in results.items()}
        return results, failures

    def _lie(self, attack, rnd, kind, configs, payload, payloads):
        """What each site is sent instead of the honest ``payload`` / ``payloads``."""
        if attack == "model-split" and kind == TaskKind.ADVERTISE_KEYS:
            shared = {k: self.params[k] for k in self.shared}
            model = model_for(self.cfg, self.method)
            set_params(model, self.params, strict=False)
            dead = {k: v for k, v in dead_model(model).items() if k in shared}
            trained = {n for n, _ in model.named_parameters() if not n.startswith("head.")}
            self._sent = {
                "victim": {k: v for k, v in shared.items() if k in trained},
                "others": dead,
            }
            other = ndarrays_to_proto({**dead, **self.strategy.payload_down(rnd)})
            return {s: payload if s == self.victim else other for s in configs}
        if attack == "trap" and kind == TaskKind.ADVERTISE_KEYS:
            from attacks.trap import craft
            from common.data.loader import load_arrays
            from common.transforms import window_hu

            public, *_ = load_arrays(self.data_dir, "attacker")
            window = tuple(self.cfg.data.window)
            crafted, _trap = craft(
                self.params, window_hu(public, window), self.cfg.train.batch_size, rnd
            )
            shared = {k: crafted[k] for k in self.shared}
            trap = ndarrays_to_proto({**shared, **self.strategy.payload_down(rnd)})
            return {s: trap for s in configs}
        if attack == "dropout-lie" and kind == TaskKind.CONSISTENCY:
            return {s: ConsistencyStage(sorted({s, self.victim})) for s in configs}
        if attack == "dropout-lie" and kind == TaskKind.UNMASK:
            everyone = sorted(self._counts)
            return {
                s: UnmaskStage(
                    sorted({s, self.victim}),
                    [j for j in everyone if j not in (s, self.victim)],
                    payloads[s].confirmations,
                )
                for s in configs
            }
        return payloads

    def gather(self, rnd, configs, payload, upload, record):
        summed, total, metrics = super().gather(rnd, configs, payload, upload, record)
        out = self.outcomes.get(rnd)
        if out is not None:
            out.aborted = record.get("aborted")
            if out.attack == "model-split" and summed is not None:
                out.max_change = self._read_victim(summed)
            log.warning("round %d: the lie %s got %s", rnd, out.attack, out)
        return summed, total, metrics

    def _read_victim(self, summed: dict[str, np.ndarray]) -> float:
        """The victim's weights from the sum (the others' inputs are n_k * the dead model they
        were sent: training moves none of its weights but the head's, and the norm layers'
        running statistics, which are left out), against the weights it was sent."""
        n_v = self._counts[self.victim]
        n_others = sum(n for s, n in self._counts.items() if s != self.victim)
        change = 0.0
        for k, sent in self._sent["victim"].items():
            guess = (summed[k].astype(np.float64) - n_others * self._sent["others"][k]) / n_v
            change = max(change, float(np.max(np.abs(guess - sent))))
        return change
