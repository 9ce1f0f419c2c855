"""Generator throughput at 256x256 (slices/s) on this machine: `make perf` or
`python bench/perf/perf_data.py [--n 200] [--size 256]`.

Reports, in one run: the anatomy alone (baseline), the full slice (anatomy + tumor + scanner with
CT-like noise), and the whole dataset writer (compressed shards, manifest) with 1 and N workers,
each as slices/s and as a ratio to the baseline.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np

from common.config import load_profile, with_overrides
from common.data.anatomy import build_anatomy
from common.data.build import build_dataset
from common.data.generate import render_slice
from common.data.sites import resolve_sites


def _rate(fn, n: int) -> float:
    fn(0)  # warm caches (FFT filters, imports)
    t = time.perf_counter()
    for i in range(1, n + 1):
        fn(i)
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=200, help="slices per measurement")
    ap.add_argument("--size", type=int, default=256)
    args = ap.parse_args()
    spec = resolve_sites(load_profile("paper").data)[1]
    stages = {
        "anatomy only (baseline)": lambda i: build_anatomy(
            np.random.default_rng(i), args.size, spec.fov_mm
        ),
        "full slice (anatomy+tumor+CT noise)": lambda i: render_slice(
            1, 1, "train", i, spec, args.size, 12.0
        ),
    }
    # Interleaved repeats, median: the first seconds of a run are slower on these machines
    # (measured: the same stage at half speed in its first pass).
    runs = {name: [] for name in stages}
    for _ in range(3):
        for name, fn in stages.items():
            runs[name].append(_rate(fn, args.n // 2))
    rows = [(name, statistics.median(r)) for name, r in runs.items()]
    base = rows[0][1]
    per_site = max(1, args.n // 5)
    cfg = with_overrides(
        load_profile("paper"),
        **{
            "data.image_size": args.size,
            "data.train_total": 5 * per_site,
            "data.holdout_per_site": 1,
            "data.test_per_site": 1,
            "data.attacker_size": 0,
        },
    )
    n_total = 5 * per_site + 10
    for workers in sorted({1, os.cpu_count() or 1}):
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            build_dataset(cfg, f"{tmp}/ds", workers=workers, gallery=False)
            rows.append(
                (f"dataset writer, {workers} worker(s)", n_total / (time.perf_counter() - t))
            )
    print(f"\nGenerator throughput at {args.size}x{args.size}, {os.cpu_count()} CPU cores\n")
    print("| stage | slices/s | ratio to baseline |\n|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r:.1f} | {r / base:.2f} |")


if __name__ == "__main__":
    main()
