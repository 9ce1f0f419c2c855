"""Where a site's DP randomness comes from, and why the server cannot know it.

A site's DP-SGD Poisson sample and Gaussian noise (``dpsgd``) and its Skellam share and Poisson
sample (``ddp-sgd``) are drawn from generators seeded by a keyed PRF:

    seed = HMAC-SHA256(key, "fedonco.dp/1" | context | round | attempt | purpose)

- ``site-secret`` (the default, and the only mode a deployed site takes without being told
  otherwise): ``key`` is 32 bytes from the operating system's CSPRNG (``secrets``), created at
  the site's first DP round and kept owner-only (0600) in its state directory (``site<ID>.dpkey``),
  so a restarted site keeps it. The server never receives it and nothing it sends enters it: the
  server's view (its config, its messages, its logs) does not determine the noise. ``context``
  is the run id, so two runs never share a stream.
- ``seeded-simulation`` (``fedonco bench``: bit-identical reruns): ``key`` = SHA-256 of the run's
  seed and the site. Anyone who knows the seed — the server, a reader of ``config.json`` — can
  regenerate the noise and subtract it: the reported ε does not hold against them. ``context``
  is the method (the run id is random; the same seed must give the same run).

``attempt`` counts how often this site has started the round (``AttemptLog``, written before
anything is drawn): a round re-run after a server restart draws fresh randomness, never the
shares or noise it drew before, and the site's accountant counts every attempt.

The generators themselves are torch's (Mersenne Twister, for Opacus' noise and sampler) and
NumPy's PCG64 (Skellam, sampling): a 63-bit (torch) or 256-bit (NumPy) seed from the PRF, under
a 256-bit key. They are not cryptographic generators, and floating-point Gaussian noise is open
to the attacks of arXiv 2107.10138 (docs/dp.md, "Randomness").
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import stat
from pathlib import Path

import numpy as np

from common.io import PRIVATE, write_bytes_atomic
from common.training.dp.settings import DPConfigError

log = logging.getLogger(__name__)

SITE_SECRET, SEEDED = "site-secret", "seeded-simulation"
RANDOMNESS = (SITE_SECRET, SEEDED)
KEY_BYTES = 32
PRF_LABEL = b"fedonco.dp/1"
SIMULATION_LABEL = b"fedonco.dp.seeded-simulation/1"
# purposes: never two draws from one stream
DP_SAMPLING, DP_NOISE, DDP_SAMPLING, DDP_NOISE = (
    "dp-sampling",
    "dp-noise",
    "ddp-sampling",
    "ddp-noise",
)

SEEDED_REFUSAL = (
    "dp.randomness = 'seeded-simulation' derives this site's DP noise from the run's public seed: "
    "the server, or anyone who reads the run's config, can regenerate the noise and subtract it, "
    "so the reported epsilon does not hold against them. `fedonco bench` does this on purpose "
    "(bit-identical reruns); a deployed site must not. Set dp.randomness = 'site-secret' (the "
    "default), or pass --allow-seeded-noise to accept that this site's DP protects nothing "
    "against the server (a simulation)"
)


def key_path(state_root: Path, site: str) -> Path:
    return Path(state_root) / f"site{site}.dpkey"


def load_or_create_key(path: Path) -> bytes:
    """The site's secret key: read it, or make it (CSPRNG, 0600, never overwriting one that
    appeared meanwhile). A key others may read or write is refused, naming the fix."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE)
        except FileExistsError:
            pass  # another process of this site made it first: use that one
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(KEY_BYTES))
            log.info("made this site's DP key %s (0600; keep it, never send it)", path)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise DPConfigError(
            f"{path}: the site's DP key has mode {mode:04o}; others may read it "
            f"and regenerate the site's noise. Run `chmod 600 {path}`"
        )
    key = path.read_bytes()
    if len(key) != KEY_BYTES:
        raise DPConfigError(
            f"{path}: a DP key is {KEY_BYTES} bytes, this file has {len(key)}; "
            "move it away and a new key is made at the next start"
        )
    return key


def simulation_key(seed: int, site: str) -> bytes:
    """The seeded-simulation key: a public function of the run's seed and the site."""
    return hashlib.sha256(SIMULATION_LABEL + f"|{int(seed)}|{site}".encode()).digest()


class NoiseSource:
    """The PRF of one site in one run: ``seed(round, attempt, purpose)``.

    ``mode`` is ``site-secret`` or ``seeded-simulation`` (recorded in the round's public report,
    and by the server in results.json as ``dp.randomness``)."""

    def __init__(self, key: bytes, mode: str, context: str) -> None:
        if mode not in RANDOMNESS:
            raise DPConfigError(f"dp.randomness must be one of {RANDOMNESS}, got {mode!r}")
        if len(key) != KEY_BYTES:
            raise DPConfigError(f"a DP key is {KEY_BYTES} bytes, got {len(key)}")
        self._key, self.mode, self.context = bytes(key), mode, str(context)

    @classmethod
    def for_site(
        cls, mode: str, *, state_root: Path, site: str, seed: int, run_id: str, method: str
    ) -> NoiseSource:
        """The site's source: its secret key (``site-secret``) or the public seed's."""
        if mode == SITE_SECRET:
            return cls(load_or_create_key(key_path(state_root, site)), mode, run_id)
        return cls.seeded(seed, site, method)

    @classmethod
    def seeded(cls, seed: int, site: str, method: str) -> NoiseSource:
        """The ``seeded-simulation`` source: a public function of the run's seed, the site and the
        method (what ``fedonco bench``'s sites and the in-process simulator draw from)."""
        return cls(simulation_key(seed, site), SEEDED, method)

    def dp_seeds(self, rnd: int, attempt: int) -> tuple[int, int]:
        """DP-SGD's (Poisson sampling, noise) ``torch.Generator`` seeds for one round attempt."""
        return self.torch_seed(rnd, attempt, DP_SAMPLING), self.torch_seed(rnd, attempt, DP_NOISE)

    def ddp_rngs(self, rnd: int, attempt: int) -> tuple[np.random.Generator, np.random.Generator]:
        """Distributed DP's (sampling, noise share) generators for one round attempt."""
        return self.numpy_rng(rnd, attempt, DDP_SAMPLING), self.numpy_rng(rnd, attempt, DDP_NOISE)

    def digest(self, rnd: int, attempt: int, purpose: str) -> bytes:
        msg = PRF_LABEL + f"|{self.context}|{int(rnd)}|{int(attempt)}|{purpose}".encode()
        return hmac.new(self._key, msg, hashlib.sha256).digest()

    def torch_seed(self, rnd: int, attempt: int, purpose: str) -> int:
        """A 63-bit seed for a ``torch.Generator``."""
        return int.from_bytes(self.digest(rnd, attempt, purpose)[:8], "big") >> 1

    def numpy_rng(self, rnd: int, attempt: int, purpose: str) -> np.random.Generator:
        """A PCG64 generator seeded with all 256 bits of the PRF output."""
        return np.random.default_rng(int.from_bytes(self.digest(rnd, attempt, purpose), "big"))

    def __repr__(self) -> str:  # never the key
        return f"NoiseSource({self.mode!r}, context={self.context!r})"


class AttemptLog:
    """How often this site has started each round of one run (``dp_attempts.json`` in its
    state directory, 0600). ``next(round)`` records the new attempt before it returns, so a crash
    after drawing can never make the next attempt reuse the same randomness."""

    def __init__(self, state_dir: Path, run_id: str) -> None:
        self.path, self.run_id = Path(state_dir) / "dp_attempts.json", run_id
        self.counts: dict[str, int] = {}
        if self.path.exists():
            saved = json.loads(self.path.read_text())
            if saved.get("run_id") == run_id:
                self.counts = {str(k): int(v) for k, v in saved.get("attempts", {}).items()}

    def next(self, rnd: int) -> int:
        attempt = self.counts.get(str(rnd), 0) + 1
        self.counts[str(rnd)] = attempt
        text = json.dumps({"run_id": self.run_id, "attempts": self.counts}, sort_keys=True)
        write_bytes_atomic(self.path, text.encode(), PRIVATE)
        return attempt


__all__ = [
    "RANDOMNESS",
    "SEEDED",
    "SEEDED_REFUSAL",
    "SITE_SECRET",
    "AttemptLog",
    "NoiseSource",
    "load_or_create_key",
    "simulation_key",
]
