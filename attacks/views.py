"""Query augmentation: each candidate is also queried under a few flips and small shifts.

A model that memorised a slice also tends to fit its flipped or shifted copies better than a
model that never saw it, and the noise of one query averages out over several: LiRA (Carlini et
al., S&P 2022) averages its per-query statistics over augmentations for that reason. A view
moves the image and its mask together (the statistic is then read on the moved mask), so the
target's output is never un-shifted and no pixel is invented: a shift pads with the edge row or
column. Every view of a candidate is one ``Predict`` call against the target, counted against the
attacker's query budget.
"""

from __future__ import annotations

import numpy as np

from common.config import MIA_VIEWS

SHIFT_PX = 2  # a small shift: ~a tenth of a tumour's diameter at 64x64

_SHIFTS = {
    "right": (0, SHIFT_PX),
    "left": (0, -SHIFT_PX),
    "down": (SHIFT_PX, 0),
    "up": (-SHIFT_PX, 0),
}
VIEW_NAMES = ("id", "hflip", "vflip", *_SHIFTS)
assert VIEW_NAMES == MIA_VIEWS, "common.config.MIA_VIEWS must list exactly these views"


def _shift(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Shift (N, H, W) by (dy, dx) pixels, padding with the edge (no wrap-around)."""
    n, h, w = a.shape
    pad = ((0, 0), (max(dy, 0), max(-dy, 0)), (max(dx, 0), max(-dx, 0)))
    p = np.pad(a, pad, mode="edge")
    y0, x0 = max(-dy, 0), max(-dx, 0)
    return p[:, y0 : y0 + h, x0 : x0 + w]


def apply_view(name: str, a: np.ndarray) -> np.ndarray:
    """The view ``name`` of a stack of slices or masks (N, H, W)."""
    a = np.asarray(a)
    if a.ndim != 3:
        raise ValueError(f"views apply to (N, H, W) stacks, got shape {a.shape}")
    if name == "id":
        return a
    if name == "hflip":
        return a[:, :, ::-1].copy()
    if name == "vflip":
        return a[:, ::-1, :].copy()
    if name in _SHIFTS:
        return _shift(a, *_SHIFTS[name])
    raise ValueError(f"unknown view {name!r}; choose from {', '.join(VIEW_NAMES)}")


def check_views(names) -> tuple[str, ...]:
    """The views in order, validated: unique, known, starting with the identity."""
    names = tuple(names)
    if not names or names[0] != "id":
        raise ValueError(f"the views must start with 'id' (the candidate itself), got {names}")
    unknown = [n for n in names if n not in VIEW_NAMES]
    if unknown or len(set(names)) != len(names):
        raise ValueError(
            f"views must be distinct names from {', '.join(VIEW_NAMES)}; got {', '.join(names)}"
        )
    return names


def views_within_budget(names, n_per_view: int, budget: int | None) -> tuple[str, ...]:
    """The longest prefix of ``names`` whose queries (``n_per_view`` each) fit ``budget``.

    Raises when even the identity view does not fit: an attack that cannot query every candidate
    once is not run."""
    names = check_views(names)
    if budget is None:
        return names
    k = budget // max(n_per_view, 1)
    if k < 1:
        raise ValueError(
            f"query budget {budget} is below one query per slice ({n_per_view} slices to score)"
        )
    return names[:k]
