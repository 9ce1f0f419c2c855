"""DP-SGD step time vs non-DP step time, and the ε of the paper's DP setting.

`python bench/perf/perf_dp.py [--base 16] [--size 64] [--batch 16] [--steps 20]`

Part 1: one optimizer step (forward, backward, step; Adam) on the same GroupNorm U-Net and the
same batch, without DP and with DP-SGD as common/training/dp/ runs it (``per_sample_backward``, then
Opacus' DPOptimizer: clip, noise, step) for each per-sample gradient mode: "fast" (common/training/dp/'s grouped-convolution samplers on Opacus' hooks, the
default), Opacus' stock "hooks" (unfold conv sampler; functorch for ConvTranspose2d),
"functorch" (every layer through torch.func), "ew" (ExpandedWeights), and "stock": Opacus
out of the box (``make_private``'s hooks, a mean loss and a full backward, i.e. without
``per_sample_backward``'s summed loss and input-only backward). Median seconds per step
and the ratio to the non-DP step, all measured in this run with the modes interleaved. Each mode's
per-sample gradients are checked against an per-image autograd loop (ground truth) first; a mode that
fails or disagrees is reported, not timed.

Part 2: ε at δ=1e-5 of the paper setting (σ=1.2, expected batch 16, 100 rounds x 1 local epoch
of ceil(N/16) Poisson steps) per site size N, with Opacus' RDP and PRV accountants.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from common.device import keep_freed_memory
from common.metrics import seg_loss
from common.model import build_model, count_parameters
from common.training.dp import (
    SiteAccountant,
    dp_steps_per_epoch,
    make_grad_sample_module,
    per_sample_backward,
    release_grad_sample_module,
    sample_rate_for,
)

MODES = ("fast", "hooks", "functorch", "ew", "stock")
PAPER_SITES = (1120, 960, 800, 640, 480)  # the paper profile's site sizes


def _reference_grad_samples(model, x, y) -> list[torch.Tensor]:
    """Ground truth: each image's own loss, backpropagated alone (a plain autograd loop)."""
    out = [[] for _ in model.parameters()]
    for i in range(len(x)):
        model.zero_grad(set_to_none=True)
        seg_loss(model(x[i : i + 1]), y[i : i + 1]).backward()
        for k, p in enumerate(model.parameters()):
            out[k].append(p.grad.detach().clone())
    model.zero_grad(set_to_none=True)
    return [torch.stack(g) for g in out]


def _wrap(model, mode: str):
    if mode == "stock":  # what make_private builds: hooks, mean loss, full backward
        from opacus.grad_sample import GradSampleModule

        return GradSampleModule(model, batch_first=True, loss_reduction="mean")
    if mode == "ew":
        from opacus.grad_sample import GradSampleModuleExpandedWeights

        return GradSampleModuleExpandedWeights(model, batch_first=True, loss_reduction="sum")
    return make_grad_sample_module(model, mode)


def _dp_step_fn(mode: str, args, x, y):
    from opacus.optimizers import DPOptimizer

    # the reference runs on an unwrapped twin (same seed, same weights; no hooks involved) in
    # float64: in float32 a per-image loop itself is ~2e-3 (relative to the largest entry) from
    # the exact per-sample gradients of this loss, and which float32 kernels run (NCHW or
    # channels_last, one image or a batch) moves a float32 result by that much either way.
    dev = x.device
    ref = _reference_grad_samples(
        build_model(args.base, "group", args.groups, seed=0).to(dev).double(),
        x.double(),
        y.double(),
    )
    model = build_model(args.base, "group", args.groups, seed=0).to(dev)
    gsm = _wrap(model, mode)
    params = list(model.parameters())

    def backward() -> None:
        if mode == "stock":
            seg_loss(gsm(x), y).backward()
        else:
            per_sample_backward(gsm, x, y)

    # correctness: Opacus' grad_sample (per-sample gradients of the per-image loss) vs reference
    backward()
    err = max(
        float((p.grad_sample.double() - r).abs().max() / r.abs().max().clamp_min(1e-12))
        for p, r in zip(params, ref, strict=True)
    )
    if err > 1e-2:
        raise AssertionError(f"per-sample gradients differ from the reference (rel err {err:.1e})")
    opt = DPOptimizer(
        torch.optim.Adam(params, lr=1e-3),
        noise_multiplier=1.2,
        max_grad_norm=1.0,
        expected_batch_size=x.shape[0],
        generator=torch.Generator(device=dev).manual_seed(0),
    )

    def step() -> None:  # what dp_train_local does per step
        opt.zero_grad(set_to_none=True)
        backward()
        opt.step()

    def close() -> None:
        if mode == "ew":
            for p in params:
                for a in ("grad_sample", "summed_grad", "_forward_counter"):
                    if hasattr(p, a):
                        delattr(p, a)
        else:
            release_grad_sample_module(gsm, params)

    return step, close, err


def step_times(args) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 1, args.size, args.size, generator=g).to(args.device)
    y = (torch.rand(args.batch, 1, args.size, args.size, generator=g) > 0.9).float().to(x.device)
    model = build_model(args.base, "group", args.groups, seed=0).to(x.device)
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def plain_step() -> None:
        opt.zero_grad(set_to_none=True)
        seg_loss(model(x), y).backward()
        opt.step()

    fns, notes, closers = {"non-DP": plain_step}, {"non-DP": ""}, []
    for mode in args.modes:
        try:
            step, close, err = _dp_step_fn(mode, args, x, y)
            step()  # warm up (functorch compiles lazily)
        except Exception as e:  # noqa: BLE001 - report every failure mode in the table
            notes[mode] = f"not usable: {type(e).__name__}: {str(e).splitlines()[0][:90]}"
            continue
        fns[f"DP {mode}"], notes[f"DP {mode}"] = step, f"grad_sample rel err {err:.1e}"
        closers.append(close)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(2):  # warm-up rounds
        for fn in fns.values():
            fn()
    for _ in range(args.steps):  # interleaved, so drift affects every mode alike
        for k, fn in fns.items():
            sync()
            t = time.perf_counter()
            fn()
            sync()
            times[k].append(time.perf_counter() - t)
    for close in closers:
        close()
    base = statistics.median(times["non-DP"])
    print(
        f"\nstep time: GroupNorm U-Net base {args.base} ({count_parameters(model):,} params), "
        f"{args.size}x{args.size}, batch {args.batch}, Adam, {args.device} "
        f"({torch.get_num_threads()} CPU threads, malloc {args.malloc}), "
        f"median of {args.steps} steps"
    )
    print(f"| {'mode':<14} | {'s/step':>8} | {'ratio':>6} | note")
    print(f"|{'-' * 16}|{'-' * 10}|{'-' * 8}|------")
    for k in fns:
        med = statistics.median(times[k])
        print(f"| {k:<14} | {med:8.4f} | {med / base:5.2f}x | {notes[k]}")
    for mode in args.modes:
        if f"DP {mode}" not in fns:
            print(f"| {'DP ' + mode:<14} | {'-':>8} | {'-':>6} | {notes[mode]}")


def epsilon_table(args) -> None:
    print(
        f"\nepsilon at delta={args.delta:g}: sigma={args.sigma}, expected batch {args.batch_eps}, "
        f"{args.rounds} rounds x 1 local epoch of ceil(N/{args.batch_eps}) Poisson steps"
    )
    print("| N site | q | steps | eps RDP | eps PRV | eps RDP replace-one |")
    print("|---|---|---|---|---|---|")
    for n in args.sites:
        q = sample_rate_for(n, args.batch_eps)
        steps = args.rounds * dp_steps_per_epoch(n, args.batch_eps)
        eps = {}
        for mech, adjacency in (
            ("rdp", "add-remove"),
            ("prv", "add-remove"),
            ("ro", "replace-one"),
        ):
            acc = SiteAccountant("rdp" if mech == "ro" else mech, adjacency)
            acc.record(args.sigma, q, steps)
            eps[mech] = acc.epsilon(args.delta)
        print(
            f"| {n} | {q:.4f} | {steps} | {eps['rdp']:.2f} | {eps['prv']:.2f} | {eps['ro']:.2f} |"
        )


def main() -> None:
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--base", type=int, default=16)
    ap.add_argument("--groups", type=int, default=4)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per mode")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--sites", type=int, nargs="+", default=list(PAPER_SITES))
    ap.add_argument("--sigma", type=float, default=1.2)
    ap.add_argument("--batch-eps", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--delta", type=float, default=1e-5)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    ap.add_argument("--skip-timing", action="store_true")
    args = ap.parse_args()
    args.malloc = keep_freed_memory()  # as every fedonco process (FEDONCO_ALLOCATOR)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.skip_timing:
        step_times(args)
    epsilon_table(args)


if __name__ == "__main__":
    main()
