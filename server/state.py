"""The server's round state, shared by the round loop and the gRPC servicer threads.

The loop opens a phase (fit or evaluate) for a set of sites and waits; servicer threads hand out
tasks and take results. Every result is checked here against the open phase before it is stored;
a rejected result changes nothing. No gRPC and no ML in here: rejections are ``Rejected`` with a
kind that the servicer maps to a status code, and tensors are decoded by a callable it passes in.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from common.config import default_cert_name
from common.logthrottle import Throttle
from server.records import TaskKind
from server.validation import clip_text

log = logging.getLogger(__name__)
# Refusals answer what any caller sends: bounded (common/logthrottle.py), apart from the round log.
refusals = logging.getLogger(__name__ + ".refusals")
refusals.addFilter(Throttle())
MAX_REJECTIONS = 1000


class Rejected(Exception):
    """A request that does not fit the server's state. ``kind`` is one of: not_found,
    failed_precondition, already_exists, invalid_argument."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class Phase:
    kind: TaskKind
    round: int
    configs: dict[str, dict[str, Any]]  # selected site -> config
    payload: Any  # what every selected site receives (encoded once by the caller) ...
    spec: dict | None  # expected tensor spec of fit results
    deadline: float  # time.monotonic()
    results: dict[str, Any] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    payloads: dict[str, Any] | None = None  # ... or, per site, what that site receives

    def payload_for(self, site: str) -> Any:
        return self.payload if self.payloads is None else self.payloads[site]

    @property
    def pending(self) -> set[str]:
        return set(self.configs) - set(self.results) - set(self.failures)


@dataclass
class Task:
    kind: TaskKind
    round: int = 0
    payload: Any = None
    config: dict[str, Any] = field(default_factory=dict)
    deadline_s: float = 0.0
    reason: str = ""


class RoundState:
    def __init__(
        self,
        run_id: str,
        sites: list[str],
        heartbeat_s: float,
        max_examples: int = 2**31 - 1,
        certs: dict[str, str] | None = None,
    ) -> None:
        self.run_id = run_id
        self.sites = list(sites)
        # site -> the CN its client certificate must carry (under mutual TLS)
        self.certs = certs or {s: default_cert_name(s) for s in self.sites}
        self.heartbeat_s = heartbeat_s
        self.max_examples = max_examples  # the cap on a site's claimed num_examples
        self._cv = threading.Condition()
        self._last_seen: dict[str, float] = {}
        self._phase: Phase | None = None
        self._finished: tuple[int, str] | None = None
        self._told_finished: set[str] = set()
        self.rejections: deque[dict] = deque(maxlen=MAX_REJECTIONS)  # the latest, no payloads

    # -- shared checks --------------------------------------------------------------------------

    def _bind(self, site: str, run_id: str | None) -> None:
        if site not in self.sites:
            raise Rejected(
                "not_found",
                f"unknown site {clip_text(site, 32)!r}",  # never the roster: anyone can ask
            )
        if run_id is not None and run_id != self.run_id:
            raise Rejected("not_found", f"unknown run {clip_text(run_id, 64)!r}: register again")
        self._last_seen[site] = time.monotonic()

    def _reject(self, site: str, rnd: int, err: Rejected) -> Rejected:
        """Keep and log a bounded account of a refused request: never its payload, at most
        ``MAX_ECHO`` characters of any string the caller chose."""
        message = clip_text(err)
        self.rejections.append(
            {"site": clip_text(site, 32), "round": rnd, "kind": err.kind, "message": message}
        )
        refusals.warning(
            "rejected %s from site %s (round %d): %s", err.kind, clip_text(site, 32), rnd, message
        )
        return err

    # -- servicer side --------------------------------------------------------------------------

    def register(self, site: str) -> None:
        with self._cv:
            first = site in self.sites and site not in self._last_seen
            self._bind(site, None)
            self._cv.notify_all()
        # once per site and run at INFO: a site re-registers whenever it looks for the open run
        log.log(logging.INFO if first else logging.DEBUG, "site %s registered", site)

    def heartbeat(self, site: str, run_id: str) -> bool:
        with self._cv:
            self._bind(site, run_id)
            return self._finished is None

    def next_task(self, site: str, run_id: str, wait_s: float) -> Task:
        """The site's task, waiting up to ``wait_s`` for one to appear (long poll)."""
        end = time.monotonic() + wait_s
        with self._cv:
            self._bind(site, run_id)
            while True:
                if self._finished is not None:
                    self._told_finished.add(site)
                    self._cv.notify_all()
                    return Task(TaskKind.FINISHED, self._finished[0], reason=self._finished[1])
                ph = self._phase
                if ph is not None and site in ph.pending:
                    left = ph.deadline - time.monotonic()
                    return Task(
                        ph.kind, ph.round, ph.payload_for(site), ph.configs[site], max(left, 0.0)
                    )
                left = end - time.monotonic()
                if left <= 0:
                    return Task(TaskKind.WAIT, reason="no task for this site yet")
                self._cv.wait(left)
                self._last_seen[site] = time.monotonic()

    def submit(
        self,
        kind: str,
        site: str,
        run_id: str,
        rnd: int,
        decode: Callable[[dict | None], Any],
    ) -> None:
        """Check a result against the open phase, decode it (outside the lock), store it."""
        with self._cv:
            try:
                self._bind(site, run_id)
                self._check_open(kind, site, rnd)
                spec = self._phase.spec
            except Rejected as err:
                raise self._reject(site, rnd, err) from None
        try:
            result = decode(spec)
        except ValueError as err:
            raise self._reject(site, rnd, Rejected("invalid_argument", str(err))) from None
        with self._cv:
            try:
                self._check_open(kind, site, rnd)
            except Rejected as err:
                raise self._reject(site, rnd, err) from None
            self._phase.results[site] = result
            self._cv.notify_all()

    def decline(self, site: str, run_id: str, rnd: int, reason: str) -> None:
        """The site sits out its open task on purpose; the phase stops waiting for it."""
        with self._cv:
            self._bind(site, run_id)
            ph = self._phase
            if ph is None or ph.round != rnd or site not in ph.pending:
                raise Rejected(
                    "failed_precondition", f"site {site} has no open task in round {rnd}"
                )
            ph.failures[site] = f"declined: {clip_text(reason)}"
            self._cv.notify_all()
        log.warning("site %s declined round %d: %s", site, rnd, clip_text(reason))

    def _check_open(self, kind: str, site: str, rnd: int) -> None:
        ph = self._phase
        if ph is None or ph.kind != kind or ph.round != rnd:
            what = f"{ph.kind} of round {ph.round}" if ph else "nothing"
            raise Rejected(
                "failed_precondition", f"{kind} for round {rnd} is not open (open: {what})"
            )
        if site not in ph.configs:
            raise Rejected("failed_precondition", f"site {site} was not selected for round {rnd}")
        if site in ph.results:
            raise Rejected("already_exists", f"site {site} already sent its {kind} for round {rnd}")
        if site in ph.failures:
            raise Rejected(
                "failed_precondition",
                f"site {site} was left out of round {rnd}: {ph.failures[site]}",
            )
        if time.monotonic() > ph.deadline:
            raise Rejected("failed_precondition", f"round {rnd} {kind} deadline has passed")

    # -- round-loop side ------------------------------------------------------------------------

    def alive_sites(self) -> list[str]:
        """Registered sites heard from within three heartbeat intervals."""
        now = time.monotonic()
        limit = 3 * self.heartbeat_s + 1.0
        with self._cv:
            return [s for s in self.sites if now - self._last_seen.get(s, -1e18) <= limit]

    def wait_for_sites(self, n: int, timeout: float, stop: threading.Event | None = None):
        """Wait until every site has registered, or ``timeout`` (or ``stop``); then at least
        ``n`` must have registered. Returns the live sites."""
        end = time.monotonic() + timeout
        with self._cv:
            while len(self._last_seen) < len(self.sites) and time.monotonic() < end:
                if stop is not None and stop.is_set():
                    return []
                self._cv.wait(min(0.5, max(end - time.monotonic(), 0.01)))
        alive = self.alive_sites()
        if len(self._last_seen) < n:  # never heard of enough sites; one gone quiet since is a
            raise TimeoutError(  # thin round for the loop to skip, not a reason to exit
                f"only {len(self._last_seen)} of {n} required sites registered in {timeout:.0f}s"
            )
        if len(alive) < len(self.sites):
            log.warning("starting with %d of %d sites: %s", len(alive), len(self.sites), alive)
        return alive

    def run_phase(
        self,
        kind: str,
        rnd: int,
        configs: dict[str, dict],
        payload: Any,
        spec: dict | None,
        timeout: float,
        payloads: dict[str, Any] | None = None,
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """Open a phase, wait for every selected site (or its deadline / silence), close it.

        Every site receives ``payload``, or its own entry of ``payloads`` when given."""
        limit = 3 * self.heartbeat_s + 1.0
        with self._cv:
            ph = Phase(
                kind,
                rnd,
                dict(configs),
                payload,
                spec,
                time.monotonic() + timeout,
                payloads=payloads,
            )
            self._phase = ph
            self._cv.notify_all()
            while ph.pending:
                now = time.monotonic()
                if now >= ph.deadline:
                    for s in ph.pending:
                        ph.failures[s] = f"no {kind} result within {timeout:.0f}s"
                    break
                for s in ph.pending:
                    if now - self._last_seen.get(s, -1e18) > limit:
                        ph.failures[s] = f"silent for more than {limit:.0f}s"
                self._cv.wait(min(0.25, ph.deadline - now))
            self._phase = None
            for s, why in sorted(ph.failures.items()):
                log.warning("round %d: site %s left out of %s: %s", rnd, s, kind, why)
            return dict(ph.results), dict(ph.failures)

    def finish(self, rounds: int, reason: str = "completed", wait_s: float = 0.0) -> None:
        """Tell the sites the run is over; wait up to ``wait_s`` until every live site has
        heard it (a site that died does not hold the server up longer than that)."""
        end = time.monotonic() + wait_s
        with self._cv:
            self._finished = (rounds, reason)
            self._cv.notify_all()
            alive = set(self.alive_sites())
            while not alive <= self._told_finished and time.monotonic() < end:
                self._cv.wait(end - time.monotonic())
