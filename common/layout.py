"""Where one method's run keeps its files: one definition for every process that writes or reads
them (the server writes them; the benchmark, the judge, the referee, `fedonco verify`, the
report and the fuzzer read them), instead of path strings repeated across modules.

    <run>/<method>/state.json            run id, last completed round, history (server/app.py)
    <run>/<method>/checkpoints/          round_NNNN.npz (+ strategy_round_NNNN.npz: its state)
    <run>/<method>/history.json          every round's record, at the end
    <run>/<method>/final_model.npz       the final global weights
    <run>/<method>/result.json           the run's result
    <run>/<method>/release/              the released model (common/release.py), one per run or
    <run>/<method>/site-state/<method>/site<S>/release/   one per site (FedBN)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunLayout:
    root: Path  # the method's run directory

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def history(self) -> Path:
        return self.root / "history.json"

    @property
    def final_model(self) -> Path:
        return self.root / "final_model.npz"

    @property
    def result(self) -> Path:
        return self.root / "result.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint(self, rnd: int) -> Path:
        """The global weights after round ``rnd``."""
        return self.checkpoints / f"round_{rnd:04d}.npz"

    def strategy_checkpoint(self, rnd: int) -> Path:
        """The strategy's own state after round ``rnd`` (an optimizer's moments), if it has any."""
        return self.checkpoints / f"strategy_round_{rnd:04d}.npz"

    @property
    def release(self) -> Path:
        return self.root / "release"

    @property
    def site_states(self) -> Path:
        """The sites' state directories of a run the benchmark drives (``--state-dir``)."""
        return self.root / "site-state"

    def site_release(self, site: str, relative: bool = False) -> Path:
        """Site ``site``'s own released model (a per-site release: FedBN); ``relative``: below
        the run directory (how the release service names it)."""
        rel = Path("site-state") / self.root.name / f"site{site}" / "release"
        return rel if relative else self.root / rel

    def site_releases(self, relative: bool = False) -> dict[str, Path]:
        """Every site's own released model present under the run (site -> its ``site_release``),
        in site order: whatever roster the run had."""
        base = self.root / "site-state" / self.root.name
        found = sorted(p.parent.parent.name for p in base.glob("site*/release/release.json"))
        return {d[len("site") :]: self.site_release(d[len("site") :], relative) for d in found}
