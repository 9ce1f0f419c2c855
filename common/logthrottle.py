"""Bounded logging at the service edges: what strangers send must not grow the log without bound.

``Throttle`` is a ``logging.Filter``: per message template (the format string, not the caller's
text), at most ``burst`` records pass in each ``window_s``; the rest are dropped and counted, and
the next record of that template that passes says how many were dropped. ``tracebacks=False``
also drops the traceback of what it lets through (gRPC logs a multi-line one for every request it
cannot deserialise), keeping the exception's one-line text.

    log = logging.getLogger(__name__)
    log.addFilter(Throttle())
"""

from __future__ import annotations

import logging
import threading
import time

BURST, WINDOW_S = 10, 60.0


class Throttle(logging.Filter):
    def __init__(
        self,
        burst: int = BURST,
        window_s: float = WINDOW_S,
        tracebacks: bool = True,
        clock=time.monotonic,
    ) -> None:
        super().__init__()
        if burst < 1 or window_s <= 0:
            raise ValueError(f"burst must be >= 1 and window_s > 0, got {burst}, {window_s}")
        self.burst, self.window_s, self.tracebacks, self.clock = burst, window_s, tracebacks, clock
        self._lock = threading.Lock()
        self._seen: dict[str, list] = {}  # template -> [window start, passed, dropped]

    def filter(self, record: logging.LogRecord) -> bool:
        key = str(record.msg)[:200]
        now = self.clock()
        with self._lock:
            entry = self._seen.setdefault(key, [now, 0, 0])
            if now - entry[0] >= self.window_s:
                entry[0], entry[1] = now, 0
            if entry[1] >= self.burst:
                entry[2] += 1
                return False
            entry[1] += 1
            dropped, entry[2] = entry[2], 0
            if len(self._seen) > 1000:  # templates are code's, but stay bounded whatever happens
                self._seen = {key: entry}
        suffix = f" ({dropped} similar line(s) dropped before this one)" if dropped else ""
        if not self.tracebacks and record.exc_info:
            err = record.exc_info[1]
            suffix += f": {type(err).__name__}: {str(err)[:200]}" if err is not None else ""
            record.exc_info, record.exc_text = None, None
        if suffix:
            record.msg, record.args = record.getMessage() + suffix, ()
        return True
