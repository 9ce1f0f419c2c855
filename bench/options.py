"""`fedonco bench` and `fedonco data`: their typed options (light: no torch import). The parsers
are in ``bench/cli.py`` (``build_parser``); ``bench.cli._typed`` turns argparse's namespace into
these, refusing an argument without a field (``tests/unit/test_cli.py`` parses every command), so
the handlers (``bench.run.run_bench``, ``bench.data_cli.run_data``) read fields, never
``getattr(args, name, default)``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BenchOptions:
    config: str | None = None
    profile: str | None = None
    seed: int | None = None
    out: str = "runs"
    device: str | None = None
    methods: str | None = None  # comma-separated; default: the profile's fl.methods
    data: str | None = None
    seeds: int = 1
    dry_run: bool = False
    sweep: str | None = None  # KEY=V1,V2,...
    auditor: int | None = None
    sweep_method: str | None = None
    engine: str = "local"
    ray_address: str | None = None
    cell_cpus: int | None = None
    cell_gpus: float | None = None
    dp_randomness: str = "seeded-simulation"


@dataclass(frozen=True)
class DataOptions:
    config: str | None = None
    profile: str | None = None
    seed: int | None = None
    out: str | None = None
    force: bool = False
    workers: int | None = None
    no_gallery: bool = False
    sites: str | None = None  # comma-separated
    splits: str | None = None  # comma-separated
    generator: str | None = None
    model: str | None = None


@dataclass(frozen=True)
class ThreatsOptions:
    config: str = "configs/standard.toml"
    seed: int | None = None
    seeds: int = 1
    out: str = "runs/threats"
    report: list[str] | None = None
    table: str | None = None
    invert: bool = False
    no_invert: bool = False
    methods: str | None = None


@dataclass(frozen=True)
class StudyOptions:
    name: str | None = None
    config: str | None = None  # None: the study's own default profile
    seed: int | None = None
    seeds: int = 3
    out: str = "runs/studies"
    engine: str = "local"
    report: str | None = None
    arms: str | None = None  # --arms A,B: only these arms now (finished ones are kept)
