"""Training-step throughput of the project's U-Net as a fraction of this machine's sgemm.

`python bench/perf/perf_train.py [--sizes standard paper] [--threads 1 2] [--steps 5]
[--federation 5] [--device cpu|cuda] [--out FILE.json]`

For each model size (standard: base 24, 64x64; paper: base 52, 256x256; batch 16, Adam) and
thread count, the step kinds the federation runs, each in the NCHW layout and in channels_last
(``build_model(channels_last=...)``, the default), timed interleaved so that drift on a shared
machine hits every variant alike (best of ``--steps`` after a warm-up):

- ``plain``: forward, backward, Adam step (FedAvg, FedBN; BatchNorm net)
- ``plain-gn``: the same on the GroupNorm net (the groupnorm rows; DP-SGD's non-DP twin)
- ``fedprox``: the same plus the proximal term (mu 0.01)
- ``dp``: one DP-SGD step as common/training/dp/ runs it (the project's per-sample sampler,
  Opacus' DPOptimizer: clip, noise, step; GroupNorm net)
- ``eval``: forward only, under no_grad, batch 64 (what the server's evaluation and the release
  service run)

FLOPs come from ``torch.utils.flop_counter`` (convolutions and matmuls: what sgemm is the peak
of); each kind's GFLOP/s is divided by the GFLOP/s of a 2048x2048 fp32 matmul on the same
threads in the same run. ``--federation N``: N processes with 1 thread each, as N sites share
the cores in a federation, each running plain steps for a fixed time; their aggregate GFLOP/s.
``--device cuda``: the same steps on the GPU (timed between ``torch.cuda.synchronize`` calls;
float32, TF32 off, as ``common.device`` runs CUDA), each as a fraction of the same run's dense
fp32 matmul (8192², TF32 off) and of its TF32 matmul (TF32 on, the tensor cores' float32
peak); no thread counts and no federation row there. Untested: no GPU has run it yet.
After the table, DP-SGD's step over ``plain-gn``'s (the same network and batch) per size,
threads and layout: issue 31's "DP overhead" ratio, as the median over the rounds of the ratio
of the two steps timed one after the other in a round (a shared machine's drift between runs
moved the ratio of best steps by +-0.05 on this project's 2-core machine). The process's malloc follows
``FEDONCO_ALLOCATOR`` as every ``fedonco`` process does (``common.device.keep_freed_memory``;
``FEDONCO_ALLOCATOR=system`` for the allocator before it); the output names it.
Training is most of every profile's wall time (the target federations and the audit's shadow
federations are both training), so this is the one hot path under everything.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from common.device import DeviceError, keep_freed_memory, resolve_device  # noqa: E402
from common.metrics import seg_loss  # noqa: E402
from common.model import build_model  # noqa: E402
from common.training.local import proximal_anchor, proximal_term  # noqa: E402

SIZES = {"standard": (24, 64), "paper": (52, 256)}  # base, image side
BATCH, GROUPS = 16, 4
DEVICE = torch.device("cpu")  # --device: where every step and the matmul peak run


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def sgemm_gflops(n: int | None = None, reps: int = 5, tf32: bool = False) -> float:
    """GFLOP/s of an n x n float32 matmul here (2048 on the CPU, 8192 on a GPU); ``tf32``: with
    TF32 allowed for the call (a GPU's tensor-core float32 peak)."""
    n = n or (8192 if DEVICE.type == "cuda" else 2048)
    a, b = torch.randn(n, n, device=DEVICE), torch.randn(n, n, device=DEVICE)
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        a @ b
        best = min(_timed(lambda: a @ b) for _ in range(reps))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    _sync()
    t = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - t


def _batch(side: int, n: int = BATCH):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, side, side, generator=g)
    y = (torch.rand(n, 1, side, side, generator=g) > 0.9).float()
    return x.to(DEVICE), y.to(DEVICE)


def step_fn(kind: str, base: int, side: int, channels_last: bool):
    """A closure that runs one step of ``kind``, and what to call when done."""
    norm = "group" if kind in ("dp", "plain-gn") else "batch"
    model = build_model(base, norm, GROUPS, seed=0, channels_last=channels_last).to(DEVICE)
    x, y = _batch(side, 64 if kind == "eval" else BATCH)
    if kind == "eval":
        model.eval()

        def run():
            with torch.no_grad():
                torch.sigmoid(model(x))

        return run, lambda: None
    if kind == "dp":
        from opacus.optimizers import DPOptimizer

        from common.training.dp import (
            make_grad_sample_module,
            per_sample_backward,
            release_grad_sample_module,
        )

        gsm = make_grad_sample_module(model, "fast")
        params = list(model.parameters())
        opt = DPOptimizer(
            torch.optim.Adam(params, lr=1e-3),
            noise_multiplier=1.2,
            max_grad_norm=1.0,
            expected_batch_size=BATCH,
            generator=torch.Generator(device=DEVICE).manual_seed(0),
        )

        def run():
            opt.zero_grad(set_to_none=True)
            per_sample_backward(gsm, x, y)
            opt.step()

        return run, lambda: release_grad_sample_module(gsm, params)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    anchor = proximal_anchor(model) if kind == "fedprox" else None

    def run():
        opt.zero_grad(set_to_none=True)
        loss = seg_loss(model(x), y)
        if anchor is not None:
            loss = loss + proximal_term(model, anchor, 0.01)
        loss.backward()
        opt.step()

    return run, lambda: None


def flops_of(kind: str, base: int, side: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    useful = {"fedprox": "plain", "dp": "plain-gn"}.get(kind, kind)
    run, close = step_fn(useful, base, side, False)
    with FlopCounterMode(display=False) as fc:
        run()
    close()
    # DP-SGD's per-sample sampler computes the weight gradients per image (the same FLOPs in
    # grouped convolutions); counted as the plain step's useful work
    return float(fc.get_total_flops())


def measure(size: str, threads: int | None, kinds: list[str], steps: int) -> list[dict]:
    """Best step time of each kind in both layouts (``threads`` None: a GPU)."""
    if threads is not None:
        torch.set_num_threads(threads)
    base, side = SIZES[size]
    variants = {(k, cl): step_fn(k, base, side, cl) for k in kinds for cl in (False, True)}
    times = {key: [] for key in variants}
    peak = tf32 = 0.0
    for fn, _close in variants.values():
        fn()  # warm-up
    for _ in range(steps):
        peak = max(peak, sgemm_gflops(reps=2))
        if DEVICE.type == "cuda":
            tf32 = max(tf32, sgemm_gflops(reps=2, tf32=True))
        for key, (fn, _close) in variants.items():
            times[key].append(_timed(fn))
    for _fn, close in variants.values():
        close()
    best = {key: min(ts) for key, ts in times.items()}
    rows = []
    for (kind, cl), t in best.items():
        flops = flops_of(kind, base, side)
        gf = flops / t / 1e9
        rows.append(
            {
                "size": size,
                "threads": threads,
                "kind": kind,
                "layout": "channels_last" if cl else "nchw",
                "step_s": t,
                "steps_s": times[(kind, cl)],  # every round's, in order
                "gflop": flops / 1e9,
                "gflops": gf,
                "sgemm_gflops": peak,
                "fraction_of_sgemm": gf / peak,
                "speedup_vs_nchw": best[(kind, False)] / t,
                **({"tf32_gflops": tf32, "fraction_of_tf32": gf / tf32} if tf32 else {}),
            }
        )
    return rows


def dp_ratios(rows: list[dict]) -> list[dict]:
    """DP-SGD's step time over the plain step of the same GroupNorm net, per size, thread
    count and layout (rows of ``measure`` holding both kinds): the median over the rounds of
    the two steps' ratio within a round (timed one after the other, so drift of a shared
    machine cancels), and the ratio of the best steps beside it."""
    by = {(r["size"], r["threads"], r["layout"], r["kind"]): r for r in rows}
    out = []
    for (size, threads, layout, kind), dp in by.items():
        plain = by.get((size, threads, layout, "plain-gn"))
        if kind != "dp" or plain is None:
            continue
        paired = [d / p for d, p in zip(dp["steps_s"], plain["steps_s"], strict=True)]
        out.append(
            {
                "size": size,
                "threads": threads,
                "layout": layout,
                "dp_over_plain": statistics.median(paired),
                "dp_over_plain_rounds": paired,
                "best_over_best": dp["step_s"] / plain["step_s"],
            }
        )
    return out


def _site_worker(args):
    base, side, channels_last, seconds = args
    keep_freed_memory()  # a spawned process: as a site's `fedonco client` would
    torch.set_num_threads(1)
    run, _ = step_fn("plain", base, side, channels_last)
    run()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        run()
        n += 1
    return n, time.perf_counter() - t0


def federation(size: str, n_sites: int, seconds: float) -> list[dict]:
    """``n_sites`` one-thread processes training at once: aggregate GFLOP/s per layout."""
    base, side = SIZES[size]
    flops = flops_of("plain", base, side)
    rows = []
    ctx = mp.get_context("spawn")
    for cl in (False, True):
        with ctx.Pool(n_sites) as pool:
            done = pool.map(_site_worker, [(base, side, cl, seconds)] * n_sites)
        agg = sum(n * flops for n, _ in done) / max(t for _, t in done) / 1e9
        rows.append(
            {
                "size": size,
                "sites": n_sites,
                "layout": "channels_last" if cl else "nchw",
                "aggregate_gflops": agg,
                "steps": [n for n, _ in done],
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["standard"], choices=sorted(SIZES))
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument(
        "--kinds",
        nargs="+",
        default=["plain", "plain-gn", "fedprox", "dp", "eval"],
        choices=["plain", "plain-gn", "fedprox", "dp", "eval"],
    )
    ap.add_argument("--steps", type=int, default=5, help="timed rounds per variant (best of)")
    ap.add_argument(
        "--federation",
        type=int,
        default=5,
        help="site processes for the shared-cores row (0: skip)",
    )
    ap.add_argument("--federation-s", type=float, default=20.0)
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N] (untested)")
    ap.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    global DEVICE
    try:
        DEVICE = resolve_device(args.device)
    except DeviceError as err:  # a GPU that is not there: one line, before anything
        raise SystemExit(f"perf_train: {err}") from None
    gpu = DEVICE.type == "cuda"
    allocator = keep_freed_memory()
    rows = []
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs; batch {BATCH}, Adam; best of {args.steps}; malloc {allocator}"
        + (f"; {torch.cuda.get_device_name(DEVICE)}" if gpu else "")
    )
    print("| size | threads | kind | layout | ms/step | GFLOP | GFLOP/s | x sgemm | vs NCHW |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        for threads in [None] if gpu else args.threads:
            for r in measure(size, threads, args.kinds, args.steps):
                rows.append(r)
                tf32 = (
                    f"; {r['fraction_of_tf32']:.2f} of TF32 {r['tf32_gflops']:.0f}" if gpu else ""
                )
                print(
                    f"| {size} | {threads or 'GPU'} | {r['kind']} | {r['layout']} | "
                    f"{1000 * r['step_s']:.0f} | {r['gflop']:.2f} | {r['gflops']:.0f} | "
                    f"{r['fraction_of_sgemm']:.2f} (of {r['sgemm_gflops']:.0f}{tf32}) | "
                    f"{r['speedup_vs_nchw']:.2f}x |"
                )
    ratios = dp_ratios(rows)
    if ratios:
        print("\nDP-SGD step / plain step of the same GroupNorm net (goal <= 1.3):")
        for r in ratios:
            where = "GPU" if gpu else f"{r['threads']} thread(s)"
            print(
                f"- {r['size']}, {where}, {r['layout']}: {r['dp_over_plain']:.2f}x (median of "
                f"{len(r['dp_over_plain_rounds'])} rounds; best over best "
                f"{r['best_over_best']:.2f}x)"
            )
    fed = []
    if args.federation and not gpu:
        print(
            f"\n{args.federation} one-thread site processes training at once "
            f"({args.federation_s:.0f} s each):"
        )
        for size in args.sizes:
            for r in federation(size, args.federation, args.federation_s):
                fed.append(r)
                print(
                    f"- {size}, {r['layout']}: {r['aggregate_gflops']:.0f} GFLOP/s in all "
                    f"(steps per site {r['steps']})"
                )
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "steps": rows,
                    "dp_over_plain": ratios,
                    "federation": fed,
                    "torch": torch.__version__,
                    "malloc": allocator,
                    "device": str(DEVICE),
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
