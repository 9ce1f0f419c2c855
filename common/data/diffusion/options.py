"""`fedonco diffusion train|report`: their arguments and typed options (light: no torch or
diffusers import). The handlers are ``common.data.diffusion.train.run_diffusion_train`` and
``common.data.diffusion.report.run_diffusion_report``."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from common.cli_args import add_config_args, count


@dataclass(frozen=True)
class TrainOptions:
    out: str
    config: str | None = None
    profile: str | None = None
    seed: int | None = None
    steps: int | None = None
    resume: bool = False
    threads: int | None = None
    device: str = "cpu"


@dataclass(frozen=True)
class ReportOptions:
    model: str
    out: str
    config: str | None = None
    profile: str | None = None
    seed: int | None = None
    n: int = 200
    seg_slices: int = 1000
    seg_epochs: int = 8


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """`diffusion train`'s arguments (fields of TrainOptions)."""
    add_config_args(p)
    p.add_argument("--out", required=True, help="model directory (new, or --resume)")
    p.add_argument("--steps", type=count, help="override diffusion.steps")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--threads", type=count, help="torch threads (default: torch's)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default: cpu)")


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    """`diffusion report`'s arguments (fields of ReportOptions)."""
    add_config_args(p)
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--out", required=True, help="report directory (report.md/.json, PNGs)")
    p.add_argument("--n", type=count, default=200, help="slices per generator (default 200)")
    p.add_argument(
        "--seg-slices",
        type=count,
        default=1000,
        help="procedural slices to train the fidelity segmenter on (default 1000)",
    )
    p.add_argument("--seg-epochs", type=count, default=8, help="segmenter epochs (default 8)")
