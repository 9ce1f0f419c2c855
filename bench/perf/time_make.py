"""Time `make venv` and `make TARGET` on a fresh clone, as a new user runs them, and record disk use.

    python bench/perf/time_make.py test --out docs/runs/make-test.json

Clones this checkout's HEAD into a temporary directory, runs `make venv` (the locked
environment, from the package index) and then `make TARGET` there, and writes the wall times,
the exit codes, the clone's size on disk (the .venv is most of it), the machine (CPU model,
cores) and the commit. The README's "two commands" block is generated from that file
(`fedonco report docs`), so the time a user is told is the time a command measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.perf.margins import _cpu  # noqa: E402
from bench.report import disk_bytes  # noqa: E402


def timed(cmd: list[str], cwd: Path, log: Path) -> tuple[int, float]:
    t0 = time.perf_counter()
    with open(log, "w") as out:
        rc = subprocess.run(
            cmd,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "CI": os.environ.get("CI", "")},
        ).returncode
    return rc, time.perf_counter() - t0


def _torch_cpu() -> str | None:
    """The CPU capability torch dispatches to here (e.g. AVX512), None without torch."""
    try:
        import torch
    except ImportError:
        return None
    return torch.backends.cpu.get_cpu_capability()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("target", help="the make target to time after `make venv`, e.g. test")
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    p.add_argument("--keep", action="store_true", help="keep the clone (prints its path)")
    args = p.parse_args(argv)
    sha = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    tmp = Path(tempfile.mkdtemp(prefix="fedonco-fresh-"))
    clone = tmp / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    rc_venv, venv_s = timed(["make", "venv"], clone, tmp / "venv.log")
    print(f"make venv: rc {rc_venv}, {venv_s:.0f} s", flush=True)
    rc, target_s = (1, 0.0)
    if rc_venv == 0:
        rc, target_s = timed(["make", args.target], clone, tmp / f"{args.target}.log")
        print(f"make {args.target}: rc {rc}, {target_s:.0f} s", flush=True)
    record = {
        "target": args.target,
        "commit": sha,
        "rc_venv": rc_venv,
        "venv_s": round(venv_s, 1),
        "rc": rc,
        "target_s": round(target_s, 1),
        "clone_bytes": disk_bytes(clone),
        "venv_bytes": disk_bytes(clone / ".venv"),
        "cpu": _cpu(),
        "torch_cpu": _torch_cpu(),  # AVX2 / AVX512: machines of one model name differ in it
        "cores": os.cpu_count(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "command": f"python bench/perf/time_make.py {args.target} --out {args.out}",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))
    if args.keep:
        print(f"kept {tmp}")
    else:
        subprocess.run(["rm", "-rf", str(tmp)], check=False)
    return 0 if rc == rc_venv == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
