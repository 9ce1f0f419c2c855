"""The privacy accountant of one site for the whole run (Opacus' RDP or PRV accountant)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from common.metrics import MAX_HISTORY_TEXT
from common.training.dp.adjacency import (
    ADD_REMOVE,
    ADJACENCIES,
    REPLACE_ONE,
    replace_one_epsilon,
)
from common.training.dp.settings import (
    ACCOUNTANTS,
    DPConfigError,
    _positive_finite,
    check_adjacency,
)

STATE_FORMAT = "fedonco.dp.site_accountant/1"


def history_text(acc: SiteAccountant) -> str:
    """The accountant's whole mechanism history, [[σ, q, steps], ...], as compact JSON: what a
    site reports so that anyone can recompute its ε from the run's results alone."""
    return json.dumps([[s, q, n] for s, q, n in acc.history], separators=(",", ":"))


def history_from_text(text) -> list[tuple[float, float, int]]:
    """Parse and check a reported history (it arrives over the network): a bounded JSON list of
    [σ > 0, 0 < q <= 1, steps >= 0] entries. ``DPConfigError`` names what is wrong."""
    if not isinstance(text, str) or len(text) > MAX_HISTORY_TEXT:
        raise DPConfigError(
            f"a mechanism history is a JSON string of at most {MAX_HISTORY_TEXT} characters"
        )
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as err:
        raise DPConfigError(f"mechanism history is not JSON: {err}") from None
    if not isinstance(entries, list):
        raise DPConfigError("mechanism history must be a list of [sigma, q, steps]")
    acc = SiteAccountant("rdp")
    for entry in entries:
        if not (isinstance(entry, list) and len(entry) == 3):
            raise DPConfigError(f"mechanism history: bad entry {entry!r:.80}")
        s, q, n = entry
        if isinstance(n, bool) or not isinstance(n, int):
            raise DPConfigError(f"mechanism history: steps must be an integer, got {n!r:.40}")
        acc.record(s, q, n)  # checks sigma and q
    return acc.history


def _opacus_accountant(mechanism: str, history: Sequence[tuple[float, float, int]]):
    from opacus.accountants import create_accountant

    acc = create_accountant(mechanism=mechanism)
    acc.history = [(float(s), float(q), int(n)) for s, q, n in history]
    return acc


def epsilons_of(history: Sequence[tuple[float, float, int]], delta: float) -> dict[str, float]:
    """ε of a (σ, q, steps) history at ``delta`` under each neighbouring relation (RDP)."""
    return {adj: SiteAccountant("rdp", adj)._epsilon(list(history), delta) for adj in ADJACENCIES}


class SiteAccountant:
    """The privacy accountant of one site for the whole run.

    ``history`` is a list of (noise_multiplier, sample_rate, steps); consecutive steps with the
    same σ and q are merged (as Opacus' own accountants do). ε is stated for ``adjacency``:
    replace-one (the default) by ``adjacency.replace_one_epsilon``, add/remove by Opacus' RDP or
    PRV accountant from this history (what Opacus reports for the same steps). Persist
    ``state_dict()`` (JSON) with the site's checkpoint after every round and restore it with
    ``from_state_dict``: never start a fresh accountant for a round or after a restart.
    """

    def __init__(self, mechanism: str = "rdp", adjacency: str = REPLACE_ONE) -> None:
        if mechanism not in ACCOUNTANTS:
            raise DPConfigError(f"accountant must be one of {ACCOUNTANTS}, got {mechanism!r}")
        if check_adjacency(adjacency) == REPLACE_ONE and mechanism != "rdp":
            raise DPConfigError(f"the {mechanism!r} accountant has no replace-one analysis here")
        self.mechanism, self.adjacency = mechanism, adjacency
        self.history: list[tuple[float, float, int]] = []

    def record(self, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Add ``steps`` noisy steps at (σ, q)."""
        _positive_finite("noise_multiplier", noise_multiplier)
        _positive_finite("sample_rate", sample_rate)  # a number first: histories arrive from sites
        if not sample_rate <= 1:
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
        probe = SiteAccountant(self.mechanism, self.adjacency)
        probe.history = list(self.history)
        probe.record(noise_multiplier, sample_rate, steps)
        return self._epsilon(probe.history, delta)

    def epsilons(self, delta: float) -> dict[str, float]:
        """ε at ``delta`` under each relation ({"replace-one": ..., "add-remove": ...}, RDP)."""
        return epsilons_of(self.history, delta)

    def _epsilon(self, history: Sequence[tuple[float, float, int]], delta: float) -> float:
        _positive_finite("delta", delta)
        if not history:
            return 0.0
        if self.adjacency == REPLACE_ONE:
            return replace_one_epsilon(history, delta)
        return float(_opacus_accountant(self.mechanism, history).get_epsilon(delta=delta))

    def state_dict(self) -> dict:
        """JSON-serialisable state: the mechanism and the (σ, q, steps) history."""
        return {
            "format": STATE_FORMAT,
            "mechanism": self.mechanism,
            "adjacency": self.adjacency,
            "history": [[s, q, n] for s, q, n in self.history],
        }

    @classmethod
    def from_state_dict(cls, state: Mapping) -> SiteAccountant:
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            raise DPConfigError(
                f"not a site accountant state (expected format {STATE_FORMAT!r}): {state!r:.200}"
            )
        acc = cls(state.get("mechanism"), state.get("adjacency", ADD_REMOVE))  # older: add/remove
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
