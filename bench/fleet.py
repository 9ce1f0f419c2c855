"""Processes of the project, started and waited for: the one helper the benchmark, the audit and
the tests share.

Every role runs as ``python -m bench.cli ROLE ...`` (the ``fedonco`` command) with its output in
a log file; a service that listens on port 0 writes the port it bound to a file, and
``wait_for_port`` polls that file with a deadline (failing with the log's tail if the process
dies first).
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the caller's server binds it next;
    if another process took it in between, that server fails to start and says so)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fedonco(*args: str) -> list[str]:
    """The command line of ``fedonco ARGS`` with this interpreter."""
    return [sys.executable, "-m", "bench.cli", *args]


def spawn(args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    """Start ``args`` with stdout and stderr going to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)


# The attacker's lines worth repeating: its phases (each shadow federation, each target, the
# ladder's timings) and progress lines (a shadow federation's rounds); not its connection chatter.
RELAYED = re.compile(r" INFO (?:attacks\.(?:shadows|ladder|cli|auditor)|fedonco\.progress): (.*)$")


def run_relaying(
    args: list[str], log: Path, label: str, relay: re.Pattern = RELAYED, poll_s: float = 1.0
) -> int:
    """Run ``args`` to completion with its output in ``log``, repeating each new line that
    ``relay`` matches (group 1: the message) as this process's own log line prefixed with
    ``label``: a long audit shows where it is instead of staying silent. Returns the exit
    code."""
    relay_log = logging.getLogger("fedonco.progress")
    proc = spawn(args, log)
    pos = 0
    while True:
        finished = proc.poll() is not None
        try:
            with open(log, "rb") as f:
                f.seek(pos)
                chunk = f.read()
        except OSError:
            chunk = b""
        end = chunk.rfind(b"\n") + 1  # only whole lines; the rest waits for the next poll
        for line in chunk[:end].decode(errors="replace").splitlines():
            m = relay.search(line)
            if m:
                relay_log.info("%s: %s", label, m.group(1).strip())
        pos += end
        if finished:
            return proc.returncode
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=poll_s)


def tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def wait_for_port(port_file: Path, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> str:
    """The port ``proc`` wrote to ``port_file``; ``RuntimeError`` with the log's tail if the
    process exits or ``timeout`` passes first."""
    end = time.monotonic() + timeout
    while not (port_file.exists() and port_file.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > end:
            why = (
                f"exited {proc.returncode}"
                if proc.poll() is not None
                else f"no port in {timeout:.0f}s"
            )
            raise RuntimeError(f"{' '.join(proc.args[3:5])} did not start ({why}):\n{tail(log)}")
        time.sleep(0.05)
    return port_file.read_text().strip()


def stop(procs: Iterable[subprocess.Popen], timeout: float = 10.0) -> None:
    """Terminate what is still running; kill what does not exit within ``timeout``."""
    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
