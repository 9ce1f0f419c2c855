"""What a site may say in its metrics: an allow-list with types and finite ranges, checked at the
service edge (``server/servicer.py``) before anything reaches the round state or the round loop.

Every site-reported metric the server reads, aggregates or records is named here; anything else
is refused with INVALID_ARGUMENT (a site of another version says which key it sent). The caps
bound what one site can make the server store per round: at most ``MAX_METRICS`` entries, and
strings of a declared length. Sizes of what a caller sends are logged and echoed at most
``MAX_ECHO`` characters long (``clip_text``).
"""

from __future__ import annotations

import math

from common.metrics import SUM_KEYS
from common.training.dp.accountant import MAX_HISTORY_TEXT
from server.records import TaskKind

MAX_METRICS = 64
MAX_ECHO = 200
HUGE = 1e15  # counts, bytes and seconds far beyond any real run, still finite


def clip_text(value, limit: int = MAX_ECHO) -> str:
    """A caller-controlled string as it may appear in a log line or an error message."""
    text = str(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def _num(lo: float, hi: float):
    return ("number", lo, hi)


_TRAIN = {
    "loss": _num(0, HUGE),
    "prox": _num(0, HUGE),
    "steps": _num(0, HUGE),
    "examples_last_epoch": _num(0, HUGE),
    "num_examples": _num(0, HUGE),
    "train_time_s": _num(0, HUGE),
    "decode_s": _num(0, HUGE),
    "encode_s": _num(0, HUGE),
    "bytes_up": _num(0, HUGE),
    # DP-SGD (client/dp_site.py: the public part of the round's report)
    "sample_rate": _num(0, 1),
    "noise_multiplier": _num(0, HUGE),
    "max_grad_norm": _num(0, HUGE),
    "delta": _num(0, 1),
    "epsilon": _num(0, math.inf),  # an exhausted budget may read inf
    "accountant": ("text", 0, 16),
    "adjacency": ("text", 0, 16),  # common.training.dp.adjacency
    "randomness": ("text", 0, 24),  # common.training.dp.randomness
    "attempt": _num(1, HUGE),  # how often the site has started this round (fresh noise each)
    "steps_total": _num(0, HUGE),
    "accountant_history": ("text", 0, MAX_HISTORY_TEXT),
    "device": ("text", 0, 16),  # where the site trained (common/device.py: cpu, cuda:N)
    "gpu": ("text", 0, 64),  # its GPU's name, on CUDA only
}
_MASKED = {"mask_s": _num(0, HUGE), "clipped": _num(0, HUGE), "bytes_up": _num(0, HUGE)}
_EVAL = {k: _num(0, HUGE) for k in SUM_KEYS}

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
