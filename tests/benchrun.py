"""`fedonco bench` as a subprocess on a config object: the one way tests run a whole benchmark
(tests/conftest.py's session fixtures, tests/realct.py's ``bench_on``, the pretraining tests)."""

import json
import subprocess
from pathlib import Path

from bench.fleet import fedonco

CONFIG = "smoke.json"  # the config file run_bench writes under its root


def run_bench(root: Path, cfg, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`fedonco bench --config root/CONFIG --out root/runs ARGS` with ``cfg`` written to
    root/CONFIG; returns the finished process (its output captured as text)."""
    path = root / CONFIG
    path.write_text(json.dumps(cfg.model_dump(mode="json")))
    return subprocess.run(
        fedonco("bench", "--config", str(path), "--out", str(root / "runs"), *args),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def bench_ok(root: Path, cfg, *args: str, timeout: int = 600) -> Path:
    """``run_bench`` that must succeed: asserts exit 0 (showing the output's tail otherwise) and
    returns the one run directory under root/runs."""
    done = run_bench(root, cfg, *args, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (run_dir,) = (root / "runs").iterdir()
    return run_dir
