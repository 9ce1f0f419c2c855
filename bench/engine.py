"""Where the cells of a benchmark run: here, one after another (``LocalEngine``, the default), or
as tasks on a Ray cluster (``RayEngine``, ``fedonco bench --engine ray``).

A cell is one federation of a benchmark: one method (or one value of a sweep) for one seed. What a
cell does is the caller's function (``bench/run.py``: ``InPlace`` here, ``run_cell`` on a node);
an engine only decides where and when it runs, retries it, and hands back an ``Outcome`` per cell
as each one ends. Ray is an optional extra, imported only when the Ray engine runs.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import signal
import socket
import tarfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.options import BenchOptions

log = logging.getLogger(__name__)

RAY_HINT = "pip install -e '.[ray]'"
DEFAULT_CELL_CPUS = 6  # what one federation keeps busy: a server and five sites


@dataclass(frozen=True)
class Cell:
    """One federation of a benchmark. ``config`` is the resolved config its processes read (JSON,
    the text of the run's config file); ``sweep`` the (key, value) of a sweep run of ``method``.
    ``cpus``/``gpus``: what it reserves on a node (one server and five sites)."""

    seed: int
    method: str
    config: str
    sweep: tuple[str, float] | None = None
    cpus: int = 1
    gpus: float = 0

    @property
    def name(self) -> str:
        """Its key in results.json (the method, or ``<method>-<key>-<value>`` in a sweep)."""
        return (
            self.method
            if self.sweep is None
            else f"{self.method}-{self.sweep[0]}-{self.sweep[1]:g}"
        )

    @property
    def config_file(self) -> str:
        """The config file its processes read, in the seed's run directory."""
        return "config.json" if self.sweep is None else f"config-{self.name}.json"

    @property
    def run_subdir(self) -> str:
        """Where its method directory lies under the seed's run directory: ``<method>/``, or a
        sweep value's ``<name>/<method>/``."""
        return "" if self.sweep is None else self.name

    @property
    def label(self) -> str:
        return f"seed {self.seed} {self.name}"


@dataclass
class Outcome:
    """How a cell ended: its function's return value, or the error of its last attempt."""

    cell: Cell
    value: dict | None
    attempts: int = 1
    error: str | None = None
    errors: list[str] = field(default_factory=list)  # one per failed attempt

    @property
    def ok(self) -> bool:
        return self.error is None


CellFn = Callable[[Cell], dict]


class LocalEngine:
    """The default: every cell in this process, one after another, as the benchmark always ran;
    an error stops the run (nothing is retried)."""

    name = "local"

    def preflight(self, cpus: float, gpus: float) -> None:
        pass

    def run(self, cells: Iterable[Cell], fn: CellFn) -> Iterator[Outcome]:
        for cell in cells:
            yield Outcome(cell, fn(cell))


def _why(err: BaseException, limit: int = 4000) -> str:
    """An attempt's error as text: the cell's own exception (not Ray's wrapper) and its message."""
    cause = getattr(err, "cause", None)
    inner = cause if isinstance(cause, BaseException) else err
    text = f"{type(inner).__name__}: {inner}".strip()
    return text if len(text) <= limit else "…" + text[-limit:]


class RayEngine:
    """Each cell a Ray task that reserves ``cell.cpus`` CPUs (and ``cell.gpus`` GPUs) on one node
    and runs the federation there, set up as this process is (``on_node``). A failed cell (its
    function raised, or its worker or node died) is submitted once more (``retries``), then
    reported; Ctrl-C cancels what has not ended (a running cell is interrupted, so its ``finally``
    stops its server and sites) and re-raises.

    ``address``: a running cluster (``ray start --head``; HOST:PORT); None starts a local Ray in
    this process for the run and stops it afterwards."""

    name = "ray"

    def __init__(self, address: str | None = None, retries: int = 1, cancel_timeout: float = 60.0):
        self.address, self.retries, self.cancel_timeout = address, retries, cancel_timeout
        self._connected = False  # this engine called ray.init (and shuts it down after its run)

    def preflight(self, cpus: float, gpus: float) -> None:
        """Connect to the cluster (or start the local Ray) and check that a cell of ``cpus`` and
        ``gpus`` fits a node: before the run's directory exists."""
        ray = import_ray()
        if not ray.is_initialized():
            self._connect(ray)
            self._connected = True
        self._check_fits(ray, cpus, gpus, local=self._connected and not self.address)

    def run(self, cells: Iterable[Cell], fn: CellFn) -> Iterator[Outcome]:
        ray = import_ray()
        cells = list(cells)
        if not cells:
            return
        if not ray.is_initialized():
            self.preflight(max(c.cpus for c in cells), max(c.gpus for c in cells))
        try:
            remote, threads = ray.remote(on_node), driver_threads()
            pending: dict = {}  # ObjectRef -> (cell, attempt, errors so far)

            def submit(cell: Cell, attempt: int, errors: list[str]) -> None:
                opts = {
                    "num_cpus": cell.cpus,
                    "num_gpus": cell.gpus,
                    "max_retries": 0,
                    "retry_exceptions": False,
                    "name": f"fedonco {cell.label}",
                }
                pending[remote.options(**opts).remote(fn, cell, threads)] = (cell, attempt, errors)

            for cell in cells:
                submit(cell, 1, [])
            try:
                while pending:
                    done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                    for ref in done:
                        cell, attempt, errors = pending.pop(ref)
                        try:
                            value = ray.get(ref)
                        except ray.exceptions.RayError as err:
                            errors = [*errors, _why(err)]
                            if attempt <= self.retries:
                                log.warning(
                                    "%s failed (attempt %d): %s; retrying",
                                    cell.label,
                                    attempt,
                                    errors[-1].splitlines()[0],
                                )
                                submit(cell, attempt + 1, errors)
                                continue
                            yield Outcome(cell, None, attempt, errors[-1], errors)
                        else:
                            yield Outcome(cell, value, attempt, None, errors)
            except BaseException:  # Ctrl-C, or the caller stopped reading (GeneratorExit)
                self._cancel(ray, list(pending))
                raise
        finally:
            if self._connected:  # disconnect (and stop the local Ray this run started)
                ray.shutdown()
                self._connected = False

    def _connect(self, ray) -> None:
        """Connect to the cluster at ``address``, or start a local Ray for this run. The cells'
        console output stays in their logs/cell.log, not on this terminal."""
        quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
        if self.address:
            hint = (
                "does `ray start --head` run there, with the same Ray and Python as here? A "
                "cluster with token authentication also needs RAY_AUTH_MODE=token and its "
                "token on this machine"
            )
            if self.address not in ("auto", "local"):  # ray.init would retry for minutes
                _reachable(self.address, hint)
            try:
                ray.init(address=self.address, **quiet)
            except ConnectionError as err:
                raise ConnectionError(f"{err} ({hint})") from None
        else:
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            ray.init(address="local", include_dashboard=False, **quiet)

    @staticmethod
    def _check_fits(ray, cpus: float, gpus: float, local: bool) -> None:
        """A cell no node can hold would wait for ever: an error on a local Ray (it will not grow),
        a warning on a cluster (an autoscaler may still add such a node)."""
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        for kind, need in (("CPU", cpus), ("GPU", gpus)):
            most = max((r.get(kind, 0) for r in nodes), default=0)
            if need > most:
                msg = (
                    f"a cell reserves {need:g} {kind}s but the largest node has {most:g}: "
                    f"lower --cell-{kind.lower()}s or add a larger node"
                )
                if local:
                    raise ValueError(msg)
                log.warning("%s; the cells wait until such a node joins (Ctrl-C stops)", msg)

    def _cancel(self, ray, refs: list) -> None:
        """Cancel without force (a running cell gets KeyboardInterrupt, so its ``finally`` stops
        its processes) and wait for the cells to end; force only what outlives the timeout."""
        if not refs:
            return
        print(f"\ncancelling {len(refs)} cell(s) ...", flush=True)
        for ref in refs:
            ray.cancel(ref, force=False)
        _, left = ray.wait(refs, num_returns=len(refs), timeout=self.cancel_timeout)
        for ref in left:
            log.warning("a cell did not stop in %.0fs; killing its worker", self.cancel_timeout)
            ray.cancel(ref, force=True)


def driver_threads() -> tuple[int, str | None]:
    """This process's thread settings: torch's intra-op threads and OMP_NUM_THREADS (or None)."""
    import torch

    return torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")


def _setenv(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def on_node(fn: CellFn, cell: Cell, threads: tuple[int, str | None]) -> dict:
    """``fn(cell)`` in a Ray worker, set up as the driver's own process would be (the Ray
    engine's task):

    - Python's SIGINT handler. A Ray worker may ignore SIGINT (one started by a shell script's
      ``ray start ... &`` does), and ``ray.cancel`` interrupts a running task by simulating one,
      which an ignored signal swallows: the cell would run to its end. With the handler it gets
      KeyboardInterrupt, and its ``finally`` blocks stop its server and sites.
    - The driver's ``threads`` (``driver_threads``): Ray sets OMP_NUM_THREADS to a task's CPUs,
      and CPU training is not bitwise the same across thread counts (public pretraining runs in
      this process, the attacker's shadow models in its own); with the driver's torch threads
      and OMP_NUM_THREADS a cell's numbers are the local engine's on the same hardware.
    """
    import torch

    main = threading.current_thread() is threading.main_thread()
    old_handler = signal.signal(signal.SIGINT, signal.default_int_handler) if main else None
    old = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(threads[0])
    _setenv("OMP_NUM_THREADS", threads[1])
    try:
        return fn(cell)
    finally:
        torch.set_num_threads(old[0])
        _setenv("OMP_NUM_THREADS", old[1])
        if main:
            signal.signal(signal.SIGINT, old_handler)


def _reachable(address: str, hint: str, timeout: float = 10.0) -> None:
    """A TCP connection to the cluster's HOST:PORT, or ConnectionError naming it."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--ray-address: HOST:PORT, got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise ConnectionError(
            f"no Ray cluster at {address}: {err.strerror or err} ({hint})"
        ) from None


def import_ray():
    try:
        import ray
    except ImportError:
        raise ValueError(f"--engine ray needs Ray: {RAY_HINT}") from None
    return ray


def make_engine(args: BenchOptions) -> LocalEngine | RayEngine:
    """The engine of ``fedonco bench`` (``--engine``, ``--ray-address`` or env RAY_ADDRESS)."""
    engine = args.engine
    ray_only = [
        f
        for f, v in (
            ("--ray-address", args.ray_address),
            ("--cell-cpus", args.cell_cpus),
            ("--cell-gpus", args.cell_gpus),
        )
        if v is not None
    ]
    if engine == "local":
        if ray_only:
            raise ValueError(f"{', '.join(ray_only)}: only with --engine ray")
        return LocalEngine()
    if engine != "ray":
        raise ValueError(f"--engine: local or ray, got {engine!r}")
    import_ray()  # fail now, naming the extra, not after the run directory exists
    return RayEngine(args.ray_address or os.environ.get("RAY_ADDRESS") or None)


# ----------------------------------------------------------------------------------------------
# a method directory across the wire: a tar in memory
# ----------------------------------------------------------------------------------------------

SKIP_DIRS = ("checkpoints",)  # the last round's model again (resume only); final_model.npz stays


def pack_dir(root: Path, skip: tuple[str, ...] = SKIP_DIRS) -> bytes:
    """Every file under ``root`` (but the ``skip`` folders at its top) as a gzipped tar."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root)
            if rel.parts[0] in skip or not (path.is_file() and not path.is_symlink()):
                continue
            tar.add(path, arcname=str(rel), recursive=False)
    return buf.getvalue()


def unpack_dir(data: bytes, dest: Path) -> None:
    """``pack_dir``'s tar into ``dest`` (nothing may land outside it)."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:  # Python < 3.10.12: check the names ourselves
            for m in tar.getmembers():
                if not m.isfile() or Path(m.name).is_absolute() or ".." in Path(m.name).parts:
                    raise ValueError(f"refusing tar member {m.name!r}")
            tar.extractall(dest)


def dataset_fingerprint(manifest: dict) -> str:
    """What makes two datasets the same bytes: every shard's name and sha256."""
    shards = sorted((e["file"], e["sha256"]) for e in manifest["shards"])
    return hashlib.sha256(json.dumps(shards).encode()).hexdigest()[:16]
