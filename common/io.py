"""Files the project writes and reads: atomic writes, JSON, and ``.npz`` without pickle.

Every file another process may read while it is being written (checkpoints, state, results,
keys) is written to a temporary sibling and renamed into place, so a reader sees the old file or
the new one, never half of one. ``.npz`` files are written deterministically (fixed zip
timestamps: the same arrays give the same bytes) and read with ``allow_pickle=False``.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from pathlib import Path

import numpy as np

_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
# File modes: weights, site state and keys are the owner's alone; what another service of the same
# deployment must read (the release service reads released weights) is readable by the group too.
PRIVATE, GROUP_READ = 0o600, 0o640
# Directories: the same two levels. Never writable by others whatever the umask (under umask 000
# another local user could otherwise replace a checkpoint or a key inside them).
PRIVATE_DIR, GROUP_DIR = 0o700, 0o750
# Certificate directories hold public certificates beside a 0600 key: readable by everyone (a
# container's user must reach its certificate and be told precisely when the key is not its own),
# writable by the owner only.
PUBLIC_DIR = 0o755


def secure_dir(path: str | Path, mode: int = PRIVATE_DIR) -> Path:
    """``mkdir -p path`` and set ``mode`` on it (its parents keep theirs); an existing directory
    of ours is tightened to ``mode`` too. Returns the path."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if path.stat().st_uid == os.getuid():  # another owner's (a mounted volume): theirs to set
        os.chmod(path, mode)
    return path


def write_bytes_atomic(path: str | Path, data: bytes, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` through a temporary sibling and a rename. ``mode`` (e.g. 0o600
    for a private key; default 0o644) is set on the temporary file before any byte is written —
    also when a stale temporary of a crashed writer is reused, whose old mode would otherwise
    stay (O_CREAT's mode applies only to a new file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    mode = 0o644 if mode is None else mode
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, obj) -> None:
    """Indented, key-sorted JSON (numpy scalars as floats), written atomically."""
    text = json.dumps(obj, indent=1, sort_keys=True, default=float) + "\n"
    write_bytes_atomic(path, text.encode())


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A deterministic compressed .npz (readable by ``np.load``) of the given arrays."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            arr_buf = io.BytesIO()
            np.lib.format.write_array(
                arr_buf, np.ascontiguousarray(arrays[name]), allow_pickle=False
            )
            zf.writestr(info, arr_buf.getvalue(), compresslevel=6)
    return buf.getvalue()


def save_npz(path: str | Path, arrays: dict[str, np.ndarray], mode: int = PRIVATE) -> None:
    """``npz_bytes`` written atomically; owner-only by default (weights, site state, data are
    nobody else's business on a shared host); GROUP_READ for what another service must read."""
    write_bytes_atomic(path, npz_bytes(arrays), mode)


def npz_from_bytes(data: bytes, keys=None) -> dict[str, np.ndarray]:
    """The arrays of an in-memory .npz, never unpickling (object arrays are refused).

    ``keys``: only these arrays (a missing one is a ``KeyError`` naming it)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {k: z[k] for k in (z.files if keys is None else keys)}


def load_npz(path: str | Path, keys=None) -> dict[str, np.ndarray]:
    """The arrays of a .npz file (read whole first, so the file is not held open)."""
    return npz_from_bytes(Path(path).read_bytes(), keys)


_SAFE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def safe_name(value, what: str) -> str:
    """``value`` if it can name a file or directory safely ([A-Za-z0-9_-], 1-64 characters: no
    separators, no '..', nothing hidden), else ValueError. For names that arrive over the network
    (a run id, a method) before they touch the file system."""
    text = value if isinstance(value, str) else ""
    if not _SAFE_NAME.fullmatch(text):
        shown = repr(value)[:80]
        raise ValueError(f"{what} {shown} is not a safe name ([A-Za-z0-9_-], 1-64 characters)")
    return text
