"""`fedonco bench`: the benchmark end to end, into runs/<run_id>/.

For each method of the profile, a real server process and five real client processes talk gRPC
over 127.0.0.1 (with secure aggregation unless the profile turns it off); this orchestrator only
starts them, watches progress, collects what they wrote and has every released model audited
(bench/audit.py). `fedonco judge` (bench/judge.py) does the audit and report when the parts run
apart (docker compose).

A benchmark is a list of cells, one federation each (method × seed × sweep value); an engine
(bench/engine.py) runs them: here one after another (``InPlace``, the default), or as tasks on a
Ray cluster (``run_cell`` on a node); the report is written here either way.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from bench.engine import (
    DEFAULT_CELL_CPUS,
    Cell,
    CellFn,
    Outcome,
    dataset_fingerprint,
    make_engine,
    pack_dir,
    unpack_dir,
)
from bench.fleet import fedonco, free_port, spawn, stop, tail, wait_for_port
from bench.options import BenchOptions
from bench.report import note_failed_cells, write_report, write_seed_summary
from common.config import (
    Config,
    Recipe,
    parse_config,
    resolve_config,
    with_device,
    with_overrides,
)
from common.data.build import split_sizes
from common.data.diffusion.generate import build_dataset
from common.data.store import check_roster, read_manifest
from common.data.summary import summary_markdown
from common.device import DeviceError, resolve_device
from common.layout import RunLayout
from common.methods import SWEEP_METHOD, get_method
from common.progress import LogProgress, progress
from common.records import RecordError, read_result, read_state
from common.training.dp.randomness import SEEDED
from common.training.pretrain import CACHE_ENV, pretrained
from common.versions import collect_versions

log = logging.getLogger(__name__)


def run_method(cfg: Config, config_path: Path, method: str, run_dir: Path, data_dir: Path) -> dict:
    """One FL run: a server and five clients as separate processes on 127.0.0.1 (a reference
    row, ``pooled`` or ``local``, is trained in this process: ``bench/reference.py``); then the
    audit of what it released. Every process, and what runs here, computes on
    ``train.device``, resolved once here and passed to each as ``--device``."""
    mdir = run_dir / method
    device = resolve_device(cfg.train.device)
    if get_method(method).kind != "federated":
        from bench.reference import train_reference

        t0 = time.perf_counter()
        print(f"{method}: reference row, trained in one process ({get_method(method).summary})")
        result = train_reference(cfg, method, data_dir, mdir, device)
        return _audited(cfg, config_path, mdir, data_dir, result, t0)
    logs = mdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    port_file = mdir / "port"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    pretraining = None
    if get_method(method).pretrained:  # once, into the run's cache: the server starts from it
        print(
            f"{method}: public pretraining ({cfg.pretrain.public_size} public slices, "
            f"{cfg.pretrain.epochs} epochs; cached for the server and the attacker)"
        )
        pretraining = pretrained(cfg.for_method(method), method, device)[1]
    address = f"127.0.0.1:{free_port()}"
    seeded = ["--allow-seeded-noise"] if cfg.for_method(method).dp.randomness == SEEDED else []
    server = spawn(
        fedonco(
            "server",
            "--config",
            str(config_path),
            "--method",
            method,
            "--data",
            str(data_dir),
            "--run-dir",
            str(mdir),
            "--address",
            address,
            "--port-file",
            str(port_file),
            "--threads",
            "1",
            "--device",
            str(device),
        ),
        logs / "server.log",
        env,
    )
    procs = [server]
    try:
        for site in cfg.site_names:  # started with the server: they retry until it listens
            procs.append(
                spawn(
                    fedonco(
                        "client",
                        "--config",
                        str(config_path),
                        "--site",
                        site,
                        "--server",
                        address,
                        "--data",
                        str(data_dir),
                        "--state-dir",
                        str(RunLayout(mdir).site_states),
                        "--threads",
                        "1",
                        "--device",
                        str(device),
                        *seeded,
                    ),
                    logs / f"client{site}.log",
                    env,
                )
            )
        wait_for_port(port_file, server, logs / "server.log")  # else the server's log says why
        _watch(cfg, method, mdir, server)
        if server.returncode != 0:
            raise RuntimeError(
                f"{method}: server exited {server.returncode}:\n{tail(logs / 'server.log')}"
            )
        for p in procs[1:]:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                log.warning("a client did not exit after the run; terminating it")
    finally:
        stop(procs)
    result = read_result(RunLayout(mdir).result).to_json()
    if pretraining is not None:  # what the public holdout said of each attempt
        result["pretraining"] = pretraining
    return _audited(cfg, config_path, mdir, data_dir, result, t0)


def _audited(cfg: Config, config_path: Path, mdir: Path, data_dir: Path, result: dict, t0: float):
    result["wall_s"] = time.perf_counter() - t0
    result["dir"] = str(mdir)
    if cfg.mia.enabled:
        from bench.audit import audit

        result["mia"] = audit(cfg, config_path, mdir, data_dir, result)
        if cfg.mia.whitebox:
            from bench.audit import whitebox_audit

            result["mia"]["whitebox"] = whitebox_audit(cfg, config_path, mdir, data_dir, result)
    return result


def _watch(cfg: Config, method: str, mdir: Path, server: subprocess.Popen) -> None:
    """A progress bar over rounds (read from the server's state.json) until the server exits."""
    state = RunLayout(mdir).state
    done = 0
    with progress(cfg.for_method(method).train.rounds, f"{method:8s}", "round") as bar:
        while server.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(timeout=0.5)
            try:
                st = read_state(state)
            except (OSError, RecordError):
                continue
            if st.round > done:
                bar.update(st.round - done)
                done = st.round
                last = st.history[-1]
                n_ok = len(last.fit.sites) if last.fit else 0
                bar.set_postfix(
                    dice=f"{last.eval.overall.get('dice', float('nan')):.3f}",
                    sites=f"{n_ok}/{len(last.selected)}",
                )


SWEEPABLE = ("noise_multiplier", "max_grad_norm", "target_epsilon")


def parse_sweep(spec: str) -> tuple[str, list[float]]:
    """'noise_multiplier=0.5,1.0,1.2' -> ('noise_multiplier', [0.5, 1.0, 1.2])."""
    key, sep, values = spec.partition("=")
    if not sep or key not in SWEEPABLE:
        raise ValueError(f"--sweep wants KEY=V1,V2,... with KEY in {SWEEPABLE}, got {spec!r}")
    try:
        vals = [float(v) for v in values.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--sweep {key}: values must be numbers, got {values!r}") from None
    if not vals or any(v <= 0 for v in vals):
        raise ValueError(f"--sweep {key}: give one or more values > 0")
    return key, vals


def _variant(cfg: Config, run_dir: Path, name: str, method: str, **dp) -> tuple[Config, Path]:
    """A copy of the config with ``dp`` settings for ``method`` (into its recipe, which the
    processes apply on top of ``[dp]``), written next to the run (processes read it)."""
    recipe = cfg.recipes.get(method) or Recipe()
    recipes = {**cfg.recipes, method: recipe.model_copy(update={"dp": {**recipe.dp, **dp}})}
    c = parse_config(
        {
            **cfg.model_dump(mode="json"),
            "recipes": {m: r.model_dump(mode="json") for m, r in recipes.items()},
        },
        f"sweep {name}",
    )
    path = run_dir / f"config-{name}.json"
    path.write_text(json.dumps(c.model_dump(mode="json"), indent=1) + "\n")
    return c, path


def check_dp(cfg: Config, manifest: dict, methods=None) -> None:
    """Every DP method's settings (its recipe applied) against every site's size (delta < 1/N,
    batch <= N, a reachable target ε), before the run."""
    from common.training.dp import DPSettings

    for method in cfg.fl.methods if methods is None else methods:
        if not get_method(method).dp:
            continue
        mcfg = cfg.for_method(method)
        if get_method(method).distributed_dp:  # one central plan (secagg on, ε reachable)
            from common.model import count_parameters, model_for
            from common.training.ddp import plan_for

            plan_for(mcfg, count_parameters(model_for(mcfg, method)))
            n_total = sum(int(row["n_train"]) for row in manifest["summary"])
            if mcfg.dp.delta >= 1.0 / n_total:
                raise ValueError(
                    f"{method}: dp.delta {mcfg.dp.delta:g} must be < 1/N = "
                    f"{1.0 / n_total:.3g} over the union of the sites"
                )
            continue
        settings, t = DPSettings.from_config(mcfg.dp), mcfg.train
        for row in manifest["summary"]:
            try:
                settings.run_sigma(int(row["n_train"]), t.batch_size, t.rounds, t.local_epochs)
            except ValueError as err:
                raise ValueError(
                    f"{method}: dp settings do not fit site {row['site']}: {err}"
                ) from None


# --dry-run: the profile's shapes (image size, model, secure aggregation, methods, audit) on a
# handful of slices per site for one round, so a GPU user can check the whole pipeline in minutes.
# The smallest site (severity extreme: 8% of train_total) keeps >= 4 slices for a DP batch of 4.
DRY_RUN = {
    "train.rounds": 1,
    "train.local_epochs": 1,
    "train.batch_size": 4,
    "data.train_total": 50,
    "data.holdout_per_site": 4,
    "data.test_per_site": 4,
    "data.attacker_size": 20,
    "mia.n_members": 10,
    "mia.n_shadows": 1,
    "mia.bootstrap": 100,
}


def bench_config(args: BenchOptions) -> Config:
    """The run's config: the profile, --seed, --device, --methods, --dp-randomness and --dry-run
    applied."""
    cfg = with_device(resolve_config(args.config, args.profile, args.seed), args.device)
    # a benchmark reruns bit-identically: its sites' DP noise derives from the seed, unless asked
    cfg = with_overrides(cfg, **{"dp.randomness": args.dp_randomness or SEEDED})
    if args.methods:
        cfg = with_overrides(cfg, **{"fl.methods": [m.strip() for m in args.methods.split(",")]})
    if args.auditor is not None:
        cfg = with_overrides(cfg, **{"mia.auditor_shadows": args.auditor})
    if args.dry_run:
        cfg = with_overrides(cfg, profile=f"{cfg.profile}-dryrun", **DRY_RUN)
        # a recipe's own train settings (e.g. a large DP batch) would undo the dry run's
        recipes = {m: r.model_copy(update={"train": {}}) for m, r in cfg.recipes.items()}
        cfg = cfg.model_copy(update={"recipes": recipes})
    return cfg


def run_bench(args: BenchOptions, cell_fn: CellFn | None = None) -> int:
    """``fedonco bench``: plan the cells (method × seed × sweep value), run them on the engine
    (``--engine``), write each seed's report and, with several seeds, mean ± sd. Returns 1 when a
    cell failed (after its retry; what succeeded is reported), 130 on Ctrl-C. ``cell_fn``: what a
    cell does instead of the engine's own (tests)."""
    cfg = bench_config(args)
    sweep = parse_sweep(args.sweep) if args.sweep else None
    if sweep:
        method = args.sweep_method or SWEEP_METHOD
        if not get_method(method).dp:
            raise ValueError(f"--sweep-method {method}: not a DP method")
        sweep = (*sweep, method)
    if args.dry_run:
        print(
            "DRY RUN: the profile's shapes on a handful of slices for one round; its numbers "
            "mean nothing, it checks that every part runs."
        )
    n_seeds = args.seeds
    if n_seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {n_seeds}")
    data = args.data
    given = given_dataset(Path(data), cfg, args) if data else None
    if sweep or any(get_method(m).dp for m in cfg.fl.methods):
        # fail before any process starts, naming the site
        check_dp(cfg, given or planned_manifest(cfg), [sweep[2]] if sweep else None)
    engine = make_engine(args)
    cpus, gpus = cell_resources(args)
    cfg, device = run_device(cfg, engine.name, gpus)  # no CUDA where asked: one line, no run dir
    engine.preflight(cpus, gpus)  # Ray: connected, and a cell fits a node
    seeds = list(range(cfg.seed, cfg.seed + n_seeds))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"seed{cfg.seed}" if n_seeds == 1 else f"seeds{seeds[0]}-{seeds[-1]}"
    run_dir = Path(args.out) / f"{cfg.profile}-{name}-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=False)
    seed_dirs = {cfg.seed: run_dir} if n_seeds == 1 else {s: run_dir / f"seed{s}" for s in seeds}
    cells = plan_cells(cfg, seed_dirs, sweep, cpus, gpus, device)
    fn = cell_fn or (InPlace(seed_dirs, data) if engine.name == "local" else run_cell)
    try:
        done, failed = gather(engine, cells, fn, seed_dirs)
    except KeyboardInterrupt:
        print(
            f"\nInterrupted: the cells still running were cancelled; {run_dir} holds what "
            "had finished (no report).",
            file=sys.stderr,
        )
        return 130
    per_seed, tables = {}, {}
    for s, sdir in seed_dirs.items():
        if done[s]["results"]:
            tables[s] = write_report(
                seed_config(cfg, s),
                sdir,
                done[s]["results"],
                done[s]["manifest"],
                done[s]["wall_s"],
            )
            per_seed[s] = json.loads((sdir / "results.json").read_text())
    if n_seeds == 1:
        table = tables.get(cfg.seed, "")
        print(f"\nRun {run_dir}\n\n{table}")
        if per_seed:
            print("Goals of the standard profile (a benchmark's verdict on this run):")
            print("".join(f"  {line}\n" for line in per_seed[cfg.seed]["goals"]))
    else:
        table = write_seed_summary(run_dir, cfg.profile, per_seed)
        print(f"\nRun {run_dir}\n\n{table}")
    print(
        f"Secure aggregation: {'on' if cfg.secagg.enabled else 'OFF'}; "
        f"membership-inference audit: {'on' if cfg.mia.enabled else 'OFF'}."
    )
    if not failed:
        return 0
    rows = [failure_row(o) for o in failed]
    for s, sdir in seed_dirs.items():
        mine = [r for r in rows if r["seed"] == s]
        if mine:
            note_failed_cells(sdir, mine, profile=cfg.profile, seed=s)
    if n_seeds > 1:
        note_failed_cells(run_dir, rows, profile=cfg.profile)
    print(
        f"\n{len(failed)} of {len(cells)} cells FAILED (after {engine.name}'s retry; listed in "
        f"results.json and results.md):",
        file=sys.stderr,
    )
    for r in rows:
        print(
            f"  seed {r['seed']} {r['cell']} ({r['attempts']} attempts): "
            f"{r['error'].splitlines()[0]}",
            file=sys.stderr,
        )
    return 1


def seed_config(cfg: Config, seed: int) -> Config:
    return cfg if seed == cfg.seed else with_overrides(cfg, seed=seed)


def cell_resources(args: BenchOptions) -> tuple[int, float]:
    cpus = DEFAULT_CELL_CPUS if args.cell_cpus is None else args.cell_cpus
    gpus = 0 if args.cell_gpus is None else args.cell_gpus
    if cpus < 1 or gpus < 0:
        raise ValueError(f"--cell-cpus must be >= 1 and --cell-gpus >= 0, got {cpus}, {gpus:g}")
    return cpus, gpus


def run_device(cfg: Config, engine: str, gpus: float):
    """The run's ``train.device``, settled before anything starts: (cfg, device).

    Local engine: resolved on this machine (``auto`` -> ``cuda:0`` or ``cpu``; ``cuda`` without
    CUDA is an error here), and the resolved device written into the config every process reads.
    Ray engine: a cell computes on what it reserves, on whatever node it lands: with
    ``--cell-gpus`` > 0 on ``cuda`` (Ray sets CUDA_VISIBLE_DEVICES to the cell's GPU, so
    ``cuda`` is that GPU), else on the CPU; ``auto`` follows the reservation, and a device that
    contradicts it is an error. The cells resolve it on their node (this machine may have no
    GPU); ``device`` is then the setting, a string."""
    spec = cfg.train.device
    if engine == "local":
        device = resolve_device(spec)
        return with_overrides(cfg, **{"train.device": str(device)}), device
    want = "cuda" if gpus > 0 else "cpu"
    if spec not in ("auto", want):
        fix = (
            "--device cuda: a cell uses the GPU it reserves, which Ray names cuda"
            if gpus > 0
            else "--cell-gpus N to reserve GPUs for the cells"
        )
        raise DeviceError(
            f"--engine ray with --cell-gpus {gpus:g}: the cells compute on {want}, "
            f"not {spec!r}; use {fix} (or --device auto)"
        )
    return with_overrides(cfg, **{"train.device": want}), want


def given_dataset(data: Path, cfg: Config, args: BenchOptions) -> dict:
    """The manifest of ``fedonco bench --data DIR`` (e.g. ``fedonco data import``'s output),
    checked against the run before anything starts: one line naming what does not fit."""
    if args.dry_run:
        raise ValueError("--dry-run makes its own tiny dataset; it does not take --data")
    if args.engine != "local":
        raise ValueError("--data runs with --engine local only (a Ray node would not have DIR)")
    manifest = read_manifest(data)
    what = f"--data {data}"
    if manifest["image_size"] != cfg.data.image_size:
        raise ValueError(
            f"{what}: {manifest['image_size']} px slices, the profile "
            f"'{cfg.profile}' trains on {cfg.data.image_size} px; import or "
            "generate it with the same profile"
        )
    check_roster(manifest, cfg.site_names, what)
    need = ["train", "test"] + (["holdout"] if cfg.mia.enabled else [])
    for row in manifest["summary"]:
        empty = [s for s in need if not row.get(f"n_{s}")]
        if empty:
            raise ValueError(
                f"{what}: site {row['site']} has no {'/'.join(empty)} slices "
                f"(every site needs {', '.join(need)})"
            )
    if cfg.mia.enabled and not sum(row.get("n_attacker", 0) for row in manifest["summary"]):
        raise ValueError(
            f"{what}: no attacker split, which the membership-inference audit needs "
            "(import more cases, or set mia.enabled = false)"
        )
    return manifest


def planned_manifest(cfg: Config) -> dict:
    """The training slices per site that the dataset will hold (what ``check_dp`` reads), without
    generating it."""
    counts = split_sizes(cfg)["train"]
    sites = zip(cfg.site_names, counts, strict=True)
    return {"summary": [{"site": s, "n_train": n} for s, n in sites]}


def plan_cells(
    cfg: Config, seed_dirs: dict[int, Path], sweep, cpus: int = 1, gpus: float = 0, device=None
):
    """Every cell of the run, seed by seed in the order the serial run takes them (each method of
    fl.methods; or a sweep's non-DP twin, then the DP method once per value). Writes each seed's
    config.json, a sweep value's config-<name>.json and versions.json (``device``: the run's,
    ``run_device``'s)."""
    cells = []
    for s, sdir in seed_dirs.items():
        c = seed_config(cfg, s)
        sdir.mkdir(parents=True, exist_ok=True)
        text = json.dumps(c.model_dump(mode="json"), indent=1) + "\n"
        (sdir / "config.json").write_text(text)
        (sdir / "versions.json").write_text(json.dumps(collect_versions(device), indent=1) + "\n")
        if not sweep:
            cells += [Cell(s, m, text, cpus=cpus, gpus=gpus) for m in c.fl.methods]
            continue
        key, values, method = sweep
        cells.append(Cell(s, get_method(method).twin, text, cpus=cpus, gpus=gpus))
        for v in values:
            _, path = _variant(c, sdir, f"{method}-{key}-{v:g}", method, **{key: v})
            cells.append(Cell(s, method, path.read_text(), (key, v), cpus=cpus, gpus=gpus))
    return cells


class InPlace:
    """The local engine's cell: in this process, into the seed's run directory, on the dataset
    built there once per seed (its first cell builds it; public pretraining is cached in the
    first seed's cache/). With ``data`` (``--data DIR``) every seed reads that dataset instead:
    the seed's data/ is a symbolic link to it (nothing copied, e.g. a hospital's imported CT)."""

    def __init__(self, seed_dirs: dict[int, Path], data: str | Path | None = None):
        self.seed_dirs, self.manifests = seed_dirs, {}
        self.data = Path(data).resolve() if data else None

    def __call__(self, cell: Cell) -> dict:
        t0 = time.perf_counter()
        sdir = self.seed_dirs[cell.seed]
        cfg = parse_config(json.loads(cell.config), str(sdir / cell.config_file))
        if cell.seed not in self.manifests:
            if len(self.seed_dirs) > 1:
                i = list(self.seed_dirs).index(cell.seed)
                print(f"\n== seed {cell.seed} ({i + 1} of {len(self.seed_dirs)}) ==")
            os.environ.setdefault(CACHE_ENV, str(sdir / "cache"))
            if self.data:
                (sdir / "data").symlink_to(self.data, target_is_directory=True)
                manifest = read_manifest(sdir / "data")
                print(f"\nDataset {self.data} ({manifest.get('generator', 'procedural')})")
            else:
                manifest = build_dataset(cfg, sdir / "data")
            print(f"\nDataset per site:\n\n{summary_markdown(manifest['summary'])}")
            self.manifests[cell.seed] = manifest
        result = run_method(
            cfg, sdir / cell.config_file, cell.method, sdir / cell.run_subdir, sdir / "data"
        )
        return {
            "result": result,
            "manifest": self.manifests[cell.seed],
            "wall_s": time.perf_counter() - t0,
        }


@contextlib.contextmanager
def _env(name: str, value: str):
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def run_cell(cell: Cell) -> dict:
    """One cell on whatever node it lands (the Ray engine's task): its dataset into a node-local
    temporary directory (``fedonco data``: same seed, same bytes), the federation exactly as
    ``run_method`` runs it there, and back its result, the dataset's manifest and the method
    directory's files as a tar (without checkpoints/; the dataset, the attacker's pool and the
    pretraining cache stay on the node). Console output goes to the method's logs/cell.log.
    Public pretraining is cached in $FEDONCO_CACHE_DIR where the node sets it, else per cell."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedonco-cell-") as tmp:
        work = Path(tmp)
        config_path = work / cell.config_file
        config_path.write_text(cell.config)
        cfg = parse_config(json.loads(cell.config), cell.label)
        log_path, data = work / "cell.log", work / "data"
        with (
            open(log_path, "w", buffering=1) as out,
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(out),
            _env(CACHE_ENV, os.environ.get(CACHE_ENV) or str(work / "cache")),
        ):
            print(f"{cell.label} on {socket.gethostname()}: dataset into {data}")
            rc = subprocess.run(
                fedonco(
                    "data",
                    "--config",
                    str(config_path),
                    "--out",
                    str(data),
                    "--workers",
                    str(max(1, int(cell.cpus))),
                    "--no-gallery",
                ),
                stdout=out,
                stderr=subprocess.STDOUT,
            ).returncode
            if rc != 0:
                raise RuntimeError(f"{cell.label}: fedonco data exited {rc}:\n{tail(log_path)}")
            manifest = read_manifest(data)
            result = run_method(cfg, config_path, cell.method, work / cell.run_subdir, data)
        mdir = Path(result["dir"])
        (mdir / "logs").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log_path, mdir / "logs" / "cell.log")
        node = {"node": socket.gethostname(), **collect_versions(resolve_device(cfg.train.device))}
        (mdir / "node.json").write_text(json.dumps(node, indent=1) + "\n")
        files = pack_dir(mdir)
    return {
        "result": result,
        "manifest": manifest,
        "files": files,
        "wall_s": time.perf_counter() - t0,
    }


def gather(engine, cells: list[Cell], fn: CellFn, seed_dirs: dict[int, Path]):
    """Run ``cells`` on ``engine`` and collect them as they end: a remote cell's files unpacked
    into its place under the seed's run directory, results in the order of ``cells``. Returns
    ({seed: {"results", "manifest", "wall_s"}}, failed outcomes). Every cell of a seed must have
    seen the same dataset (a cell that did not is failed)."""
    done = {s: {"results": {}, "manifest": None, "wall_s": 0.0} for s in seed_dirs}
    ok: dict[Cell, dict] = {}
    failed: list[Outcome] = []
    # the whole run's progress over cells: a bar where they run elsewhere, and log lines where
    # they run here (each federation shows its own rounds' bar, and its audit its phases)
    bar = (
        progress(len(cells), "bench", "cell")
        if engine.name != "local"
        else LogProgress(len(cells), "bench", "cell", every_s=0.0)
    )
    with bar, contextlib.closing(engine.run(cells, fn)) as outcomes:
        for out in outcomes:
            bar.update(1)
            cell, v = out.cell, out.value
            seen = done[cell.seed]
            if out.ok:
                seen["manifest"] = seen["manifest"] or v["manifest"]
                mine, first = (
                    dataset_fingerprint(v["manifest"]),
                    dataset_fingerprint(seen["manifest"]),
                )
                if mine != first:
                    out.error = (
                        f"its dataset (fingerprint {mine}) differs from the one seed "
                        f"{cell.seed}'s other cells saw ({first}): do the nodes run the "
                        "same versions? (node.json in each method directory)"
                    )
            if not out.ok:
                failed.append(out)
                tqdm.write(
                    f"FAILED {cell.label} after {out.attempts} attempt(s): "
                    f"{out.error.splitlines()[0]}",
                    file=sys.stderr,
                )
                continue
            sdir = seed_dirs[cell.seed]
            mdir = sdir / cell.run_subdir / cell.method
            if v.get("files") is not None:  # ran elsewhere: its files into their usual place
                unpack_dir(v["files"], mdir)
                manifest_copy = sdir / "data-manifest.json"
                if not manifest_copy.exists():
                    manifest_copy.write_text(json.dumps(v["manifest"], indent=1) + "\n")
            result = {**v["result"], "dir": str(mdir)}
            if cell.sweep:
                result["sweep"] = {cell.sweep[0]: cell.sweep[1], "method": cell.method}
            ok[cell] = result
            seen["wall_s"] += v["wall_s"]
    for cell in cells:
        if cell in ok:
            done[cell.seed]["results"][cell.name] = ok[cell]
    return done, failed


def failure_row(out: Outcome) -> dict:
    c = out.cell
    return {
        "seed": c.seed,
        "cell": c.name,
        "method": c.method,
        "sweep": dict([c.sweep]) if c.sweep else None,
        "attempts": out.attempts,
        "error": out.error,
        "errors": out.errors or [out.error],
    }
