"""The privacy ledger of a distributed-DP run: one line per unmasked noisy sum, written before
anything derived from that sum leaves the server.

``ddp-sgd``'s accountant is the server's. A sum the server unmasked is a release whether or not
the round is later checkpointed: a server killed between unmasking and its checkpoint re-runs the
round on resume, and the sites (fresh shares per attempt) release a second sum. The checkpointed
history holds only the second; the ledger (``privacy_ledger.jsonl``, append-only, fsynced,
0600) holds both, and ε is computed from it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from common.io import PRIVATE

LEDGER = "privacy_ledger.jsonl"


class PrivacyLedger:
    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LEDGER
        self.entries: list[dict] = []
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    self.entries.append(json.loads(line))
                except json.JSONDecodeError:  # a line torn by a crash mid-write: it is the last
                    break

    def append(self, entry: dict) -> None:
        """Record a release (durably: written and fsynced before this returns)."""
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE)
        try:
            os.write(fd, (json.dumps(entry, sort_keys=True) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        self.entries.append(entry)
