"""Library versions, git revision, lock file and device, saved next to every run (versions.json)."""

from __future__ import annotations

import hashlib
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = (
    "numpy",
    "scipy",
    "torch",
    "pydantic",
    "grpcio",
    "protobuf",
    "matplotlib",
    "opacus",
    "cryptography",
    "scikit-learn",
    "diffusers",
)


def _git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


LOCK = Path(__file__).resolve().parents[1] / "requirements" / "lock.txt"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")


def lock_status(lock: Path = LOCK) -> dict:
    """The lock file's sha256 and every locked package whose installed version differs from it
    (`make venv` installs exactly the lock, so a non-empty list means another environment).
    A checkout without the lock (an image built from the wheelhouse) records null."""
    try:
        text = lock.read_text()
    except OSError:
        return {"file": None, "sha256": None, "mismatches": None}
    mismatches = {}
    for line in text.splitlines():
        m = _PIN.match(line)
        if not m:
            continue
        name, want = m.groups()
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            have = None
        if have != want:
            mismatches[name] = {"locked": want, "installed": have}
    return {
        "file": lock.name,
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
        "mismatches": mismatches,
    }


def collect_versions(device=None) -> dict:
    """``device``: the run's (a ``torch.device``: recorded by ``common.device.device_record``,
    with the GPU's name only for CUDA; a string: as given; None: the CPU). ``cuda_available``
    says whether this process could see a GPU at all, used or not."""
    libs = {}
    for name in PACKAGES:
        try:
            libs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            libs[name] = None
    from common.device import DeviceError, allocator_in_effect, default_layout, device_record

    try:
        layout = default_layout()
    except DeviceError as e:
        layout = str(e)

    threads = None
    try:
        import torch

        cuda = torch.cuda.is_available()
        threads = torch.get_num_threads()
    except ImportError:
        cuda = False
    return {
        "git_sha": _git_sha(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        **device_record("cpu" if device is None else device),
        "cuda_available": cuda,
        # what the benchmark's own process computes (public pretraining, the reference rows)
        # depends on it in the last bits; `fedonco verify` recomputes with the same count
        "torch_threads": threads,
        "layout": layout,  # of the model's convolutions (FEDONCO_LAYOUT): its float32 rounding
        "allocator": allocator_in_effect(),  # FEDONCO_ALLOCATOR: speed only, never a result
        "libraries": libs,
        "lock": lock_status(),
    }
