"""Optional mask-conditioned diffusion generator for synthetic CT slices (diffusers, from scratch).

Needs the ``diffusion`` extra (``pip install -e '.[diffusion]'``). Nothing here ever contacts a
model hub: models are written with ``save_pretrained`` and read back with
``from_pretrained(local_files_only=True)``, and ``HF_HUB_OFFLINE`` is set on import.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
