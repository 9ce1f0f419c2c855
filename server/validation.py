"""What a site may say in its metrics: an allow-list with types and finite ranges, checked at the
service edge (``server/servicer.py``) before anything reaches the round state or the round loop.

Every site-reported metric the server reads, aggregates or records is a row of the table in
``common/metrics.py`` (``FIT_METRICS``, ``MASKED_METRICS``, ``EVAL_METRICS``); anything else
is refused with INVALID_ARGUMENT (a site of another version says which key it sent). The caps
bound what one site can make the server store per round: at most ``MAX_METRICS`` entries, and
strings of a declared length. Sizes of what a caller sends are logged and echoed at most
``MAX_ECHO`` characters long (``clip_text``).
"""

from __future__ import annotations

import math

from common.metrics import EVAL_METRICS, FIT_METRICS, MASKED_METRICS, SUM_KEYS
from server.records import TaskKind

MAX_METRICS = 64
MAX_ECHO = 200


def clip_text(value, limit: int = MAX_ECHO) -> str:
    """A caller-controlled string as it may appear in a log line or an error message."""
    text = str(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def _rules(table) -> dict[str, tuple]:
    return {k: (m.kind, m.lo, m.hi) for k, m in table.items()}


_TRAIN, _MASKED, _EVAL = _rules(FIT_METRICS), _rules(MASKED_METRICS), _rules(EVAL_METRICS)

SCHEMAS = {
    TaskKind.FIT: (_TRAIN, ()),
    TaskKind.ADVERTISE_KEYS: (_TRAIN, ()),
    TaskKind.MASKED_INPUT: (_MASKED, ("clipped",)),
    TaskKind.EVALUATE: (_EVAL, SUM_KEYS),
}


def check_metrics(kind: TaskKind, metrics: dict) -> dict:
    """``metrics`` if every entry is allowed for ``kind`` and within its type and range (and the
    required ones are there); else ``ValueError`` naming the first problem."""
    schema, required = SCHEMAS[kind]
    if len(metrics) > MAX_METRICS:
        raise ValueError(f"{len(metrics)} metrics > the limit of {MAX_METRICS}")
    missing = [k for k in required if k not in metrics]
    if missing:
        raise ValueError(f"{kind} metrics lack {', '.join(missing)}")
    for key, value in metrics.items():
        rule = schema.get(key)
        if rule is None:
            raise ValueError(f"metric {clip_text(key, 64)!r} is not one a site reports for {kind}")
        what, lo, hi = rule
        if what == "text":
            if not isinstance(value, str) or len(value) > hi:
                raise ValueError(f"metric {key!r} must be text of at most {hi} characters")
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"metric {key!r} must be a number, got {type(value).__name__}")
        if math.isnan(value) or not lo <= value <= hi or (math.isinf(value) and hi != math.inf):
            raise ValueError(f"metric {key!r} = {clip_text(value, 40)} is outside [{lo}, {hi}]")
    return metrics


def check_num_examples(n: int, cap: int) -> int:
    """A site's claimed training-set size: positive and at most the federation's ``cap`` (the
    operator's declared maximum per site, ``fl.max_examples_per_site``), so no site can claim
    most of the weighted average for itself."""
    if n <= 0:
        raise ValueError(f"num_examples must be positive, got {n}")
    if n > cap:
        raise ValueError(f"num_examples {n} exceeds this federation's cap of {cap} per site")
    return int(n)
