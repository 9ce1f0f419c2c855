"""What a run writes and other processes read, as typed records (pydantic, like the config): one
schema for the server that writes ``state.json``, ``history.json`` and ``result.json``
(``common/layout.py`` says where) and the benchmark, its progress bar, the judge, the report
and ``fedonco verify`` that read them. A record that does not fit is refused where it is
written or read, naming the field, instead of surfacing later as a KeyError in a report.

    RoundRecord   one round of history.json (and of state.json's history)
    SkippedRound  a round not run for want of live sites (state.json, result.json)
    ServerState   state.json: the run so far (a resume and the progress bar read it)
    RunResult     result.json: a federation's (server/app.py) or a reference row's
                  (bench/reference.py) result

Site metrics stay a mapping of name -> scalar: their names, types and ranges are the metric
table's (``common/metrics.py``), checked by the server when they arrive.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
)

from common.io import write_json_atomic

Scalar = StrictBool | StrictInt | StrictFloat | StrictStr | None
Number = StrictInt | StrictFloat  # JSON keeps 3.0 a float and 3 an int; both are numbers


class RecordError(ValueError):
    """A run file that does not fit its schema; the message names the file and the field."""


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_json(self) -> dict:
        """The JSON form: only the fields that were given (a reference row's result has no
        federation fields, and the other way round)."""
        return self.model_dump(mode="python", exclude_unset=True)


class FitSummary(_Record):
    """The sites that contributed to a round: their reported metrics and the total weight."""

    sites: dict[str, dict[str, Scalar | list]]
    total_weight: Number


class EvalSummary(_Record):
    """A round's evaluation (common/evaluation.py ``summarize``): per site, pooled, site mean."""

    where: Literal["server", "sites"]
    overall: dict[str, Number]
    per_site: dict[str, dict[str, Number]]
    dice_site_mean: Number
    failures: dict[str, str] = Field(default_factory=dict)  # sites that evaluated nothing
    error: str | None = None  # why the model could not be evaluated (e.g. outputs not finite)


class DDPRecord(_Record):
    """The distributed-DP mechanism a round's step realised (server/app.py ``fit_phase``)."""

    q: Number
    mu: Number
    mu_target: Number
    sites: StrictInt
    delta1: Number
    delta2: Number


class RoundRecord(_Record):
    """One completed or aborted round of history.json."""

    round: StrictInt = Field(ge=1)
    selected: list[str]
    failures: dict[str, str] = Field(default_factory=dict)
    aborted: str | None = None  # why the model did not change this round
    fit: FitSummary | None = None  # absent when aborted
    eval: EvalSummary
    timing_s: dict[str, Number]
    bytes_down_per_site: StrictInt
    secagg: dict[str, Any] | None = None  # server/secure.py's record of the masked round
    ddp: DDPRecord | None = None


class SkippedRound(_Record):
    round: StrictInt = Field(ge=1)
    attempt: StrictInt = Field(ge=1)
    alive: list[str]
    reason: str


class ServerState(_Record):
    """state.json: rewritten after every round (server/app.py ``_save_state``)."""

    run_id: str
    method: str
    round: StrictInt = Field(ge=0)  # the last completed round
    history: list[RoundRecord]
    initial_model_sha256: str
    skipped: list[SkippedRound] = Field(default_factory=list)


class RunResult(_Record):
    """result.json. The first block is every run's; then a federation's and a reference row's."""

    method: str
    rounds: StrictInt
    n_params: StrictInt
    initial_model_sha256: str
    final_model_sha256: str
    evaluated_at: str | None
    dice: Number | None
    dice_global: Number | None
    fp_rate_empty: Number | None
    ce_loss: Number | None
    dice_site_mean: Number | None
    dice_per_site: dict[str, Number | None]
    device: dict[str, Any]
    # a federation's (server/app.py finalize)
    run_id: str | None = None
    status: str | None = None
    transport: str | None = None
    skipped_rounds: list[SkippedRound] | None = None
    wall_s: Number | None = None
    epsilon: Number | None = None
    delta: Number | None = None
    accountant: str | None = None
    dp: dict[str, Any] | None = None
    # a reference row's (bench/reference.py)
    kind: str | None = None
    site_model_sha256: dict[str, str] | None = None
    dice_cross: dict[str, dict[str, Number | None]] | None = None
    dice_all_sites: Number | None = None
    train_s: Number | None = None


R = TypeVar("R", bound=_Record)


def _fit(kind: type[R], data: Any, where: str) -> R:
    try:
        return kind.model_validate(data)
    except ValidationError as err:
        e = err.errors()[0]
        loc = ".".join(str(p) for p in e["loc"])
        more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
        raise RecordError(f"{where}: not a {kind.__name__}: {loc}: {e['msg']}{more}") from None


def _load(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise RecordError(f"{path}: not valid JSON: {err}") from None


def write_record(path: Path, record: _Record) -> None:
    write_json_atomic(path, record.to_json())


def read_state(path: Path) -> ServerState:
    return _fit(ServerState, _load(path), str(path))


def read_history(path: Path) -> list[RoundRecord]:
    data = _load(path)
    if not isinstance(data, list):
        raise RecordError(f"{path}: not a list of rounds")
    return [_fit(RoundRecord, r, f"{path} [{i}]") for i, r in enumerate(data)]


def read_result(path: Path) -> RunResult:
    return _fit(RunResult, _load(path), str(path))


def round_record(data: dict) -> RoundRecord:
    """A round the server just assembled, checked against the schema before it is kept."""
    return _fit(RoundRecord, data, f"round {data.get('round')}")


def server_state(data: dict) -> ServerState:
    return _fit(ServerState, data, f"state of run {data.get('run_id')}")


def run_result(data: dict) -> RunResult:
    return _fit(RunResult, data, f"result of {data.get('method')}")
