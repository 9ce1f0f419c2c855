"""Progress for long work: a tqdm bar on a terminal, plain log lines elsewhere.

Piped to a file, a tqdm bar writes one endless line of carriage returns (an 11 KB line per bar
was seen in a bench log). ``progress`` gives the bar only when the stream is a terminal;
otherwise a ``LogProgress`` that logs ``desc: 3/10 rounds (30%), 41s, dice=0.552`` when a step
completes, at most once every ``every_s`` seconds, and always at the end.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

from tqdm import tqdm

log = logging.getLogger("fedonco.progress")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # every fedonco process's lines


class LogProgress:
    """The subset of tqdm's interface the project uses (update, set_postfix, close, ``with``),
    as log lines."""

    def __init__(
        self, total: int | None, desc: str, unit: str, initial: int = 0, every_s: float = 30.0
    ) -> None:
        self.total, self.desc, self.unit, self.n = total, desc.strip(), unit, initial
        self.every_s, self.postfix = every_s, ""
        self.t0 = time.monotonic()
        self._last = -float("inf")  # the first step is always logged
        self._logged = initial  # the count the last line showed
        self._initial = initial  # a resumed count: the pace counts only this run's steps

    def _line(self) -> str:
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        post = f", {self.postfix}" if self.postfix else ""
        spent = time.monotonic() - self.t0
        left = ""
        if self.total and self.total > self.n > self._initial:  # at the pace so far
            left = f", ~{spent / (self.n - self._initial) * (self.total - self.n):.0f}s left"
        return f"{self.desc}: {done} {self.unit}s{pct}, {spent:.0f}s{left}{post}"

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.every_s or (self.total and self.n >= self.total):
            self._emit(now)

    def _emit(self, now: float) -> None:
        self._last, self._logged = now, self.n
        log.info("%s", self._line())

    def set_postfix(self, **kw) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kw.items())

    def close(self) -> None:
        """Log where it ended, unless the last line already said so."""
        if self.n != self._logged:
            self._emit(time.monotonic())

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(
    total: int | None,
    desc: str,
    unit: str = "it",
    initial: int = 0,
    stream: TextIO | None = None,
    every_s: float = 30.0,
):
    """A tqdm bar when ``stream`` (default stderr) is a terminal, else log lines."""
    stream = stream or sys.stderr
    if stream.isatty():
        return tqdm(total=total, desc=desc, unit=unit, initial=initial, file=stream)
    return LogProgress(total, desc, unit, initial, every_s)
