"""`fedonco bench`: the benchmark end to end, into runs/<run_id>/.

For each method of the profile, a real server process and five real client processes talk gRPC
over 127.0.0.1 (with secure aggregation unless the profile turns it off); this orchestrator only
starts them, watches progress, collects what they wrote and has every released model audited
(bench/audit.py). `fedonco judge` (bench/judge.py) does the audit and report when the parts run
apart (docker compose).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import time
from pathlib import Path

from tqdm import tqdm

from bench.fleet import fedonco, free_port, spawn, stop, tail, wait_for_port
from bench.report import write_report, write_seed_summary
from common.config import SITE_NAMES, Config, Recipe, parse_config, resolve_config, with_overrides
from common.data.diffusion.generate import build_dataset
from common.data.summary import summary_markdown
from common.methods import SWEEP_METHOD, get_method
from common.training.pretrain import CACHE_ENV, pretrained_params
from common.versions import collect_versions

log = logging.getLogger(__name__)


def run_method(cfg: Config, config_path: Path, method: str, run_dir: Path, data_dir: Path) -> dict:
    """One FL run: a server and five clients as separate processes on 127.0.0.1 (a reference
    row, ``pooled`` or ``local``, is trained in this process: ``bench/reference.py``); then the
    audit of what it released."""
    mdir = run_dir / method
    if get_method(method).kind != "federated":
        from bench.reference import train_reference

        t0 = time.perf_counter()
        print(f"{method}: reference row, trained in one process ({get_method(method).summary})")
        result = train_reference(cfg, method, data_dir, mdir)
        return _audited(cfg, config_path, mdir, data_dir, result, t0)
    logs = mdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    port_file = mdir / "port"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    if get_method(method).pretrained:  # once, into the run's cache: the server starts from it
        print(f"{method}: public pretraining ({cfg.pretrain.public_size} public slices, "
              f"{cfg.pretrain.epochs} epochs; cached for the server and the attacker)")  # fmt: skip
        pretrained_params(cfg.for_method(method), method)
    address = f"127.0.0.1:{free_port()}"
    server = spawn(fedonco(
        "server", "--config", str(config_path), "--method", method, "--data", str(data_dir),
        "--run-dir", str(mdir), "--address", address, "--port-file", str(port_file), "--threads", "1"),
        logs / "server.log", env)  # fmt: skip
    procs = [server]
    try:
        for site in SITE_NAMES:  # started with the server: they retry until it listens
            procs.append(spawn(fedonco(
                "client", "--config", str(config_path), "--site", site, "--server", address,
                "--data", str(data_dir), "--state-dir", str(mdir / "site-state"), "--threads", "1"),
                logs / f"client{site}.log", env))  # fmt: skip
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
    result = json.loads((mdir / "result.json").read_text())
    return _audited(cfg, config_path, mdir, data_dir, result, t0)


def _audited(cfg: Config, config_path: Path, mdir: Path, data_dir: Path, result: dict, t0: float):
    result["wall_s"] = time.perf_counter() - t0
    result["dir"] = str(mdir)
    if cfg.mia.enabled:
        from bench.audit import audit

        result["mia"] = audit(cfg, config_path, mdir, data_dir, result)
    return result


def _watch(cfg: Config, method: str, mdir: Path, server: subprocess.Popen) -> None:
    """A progress bar over rounds (read from the server's state.json) until the server exits."""
    state = mdir / "state.json"
    done = 0
    with tqdm(total=cfg.for_method(method).train.rounds, desc=f"{method:8s}", unit="round") as bar:
        while server.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(timeout=0.5)
            try:
                st = json.loads(state.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if st["round"] > done:
                bar.update(st["round"] - done)
                done = st["round"]
                last = st["history"][-1]
                n_ok = len(last.get("fit", {}).get("sites", {}))
                bar.set_postfix(dice=f"{last['eval']['overall'].get('dice', float('nan')):.3f}",
                                sites=f"{n_ok}/{len(last['selected'])}")  # fmt: skip


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
    c = parse_config({**cfg.model_dump(mode="json"), "recipes": {
        m: r.model_dump(mode="json") for m, r in recipes.items()}}, f"sweep {name}")  # fmt: skip
    path = run_dir / f"config-{name}.json"
    path.write_text(json.dumps(c.model_dump(mode="json"), indent=1) + "\n")
    return c, path


def run_sweep(
    cfg: Config, run_dir: Path, key: str, values: list[float], method: str = SWEEP_METHOD
) -> dict:
    """The DP ``method`` once per value (plus its non-DP twin as the reference): Dice and
    leakage against ε."""
    twin = get_method(method).twin
    results = {twin: run_method(cfg, run_dir / "config.json", twin, run_dir, run_dir / "data")}
    for v in values:
        name = f"{method}-{key}-{v:g}"
        c, path = _variant(cfg, run_dir, name, method, **{key: v})
        r = run_method(c, path, method, run_dir / name, run_dir / "data")
        results[name] = {**r, "sweep": {key: v, "method": method}}
    return results


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
                raise ValueError(f"{method}: dp.delta {mcfg.dp.delta:g} must be < 1/N = "
                                 f"{1.0 / n_total:.3g} over the union of the sites")  # fmt: skip
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


def bench_config(args) -> Config:
    """The run's config: the profile, --seed, --methods and --dry-run applied."""
    cfg = resolve_config(args.config, args.profile, args.seed)
    if getattr(args, "methods", None):
        cfg = with_overrides(cfg, **{"fl.methods": [m.strip() for m in args.methods.split(",")]})
    if getattr(args, "auditor", None) is not None:
        cfg = with_overrides(cfg, **{"mia.auditor_shadows": args.auditor})
    if getattr(args, "dry_run", False):
        cfg = with_overrides(cfg, profile=f"{cfg.profile}-dryrun", **DRY_RUN)
        # a recipe's own train settings (e.g. a large DP batch) would undo the dry run's
        recipes = {m: r.model_copy(update={"train": {}}) for m, r in cfg.recipes.items()}
        cfg = cfg.model_copy(update={"recipes": recipes})
    return cfg


def run_bench(args) -> int:
    cfg = bench_config(args)
    sweep = parse_sweep(args.sweep) if args.sweep else None
    if sweep:
        method = getattr(args, "sweep_method", None) or SWEEP_METHOD
        if not get_method(method).dp:
            raise ValueError(f"--sweep-method {method}: not a DP method")
        sweep = (*sweep, method)
    if getattr(args, "dry_run", False):
        print("DRY RUN: the profile's shapes on a handful of slices for one round; its numbers "
              "mean nothing, it checks that every part runs.")  # fmt: skip
    n_seeds = getattr(args, "seeds", None) or 1
    if n_seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {n_seeds}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if n_seeds == 1:
        run_dir = Path(args.out) / f"{cfg.profile}-seed{cfg.seed}-{stamp}"
        run_dir.mkdir(parents=True, exist_ok=False)
        table = run_one(cfg, run_dir, sweep)
        print(f"\nRun {run_dir}\n\n{table}")
        goals = json.loads((run_dir / "results.json").read_text())["goals"]
        print("Goals of the standard profile (a benchmark's verdict on this run):")
        print("".join(f"  {line}\n" for line in goals))
    else:
        seeds = list(range(cfg.seed, cfg.seed + n_seeds))
        run_dir = Path(args.out) / f"{cfg.profile}-seeds{seeds[0]}-{seeds[-1]}-{stamp}"
        run_dir.mkdir(parents=True, exist_ok=False)
        per_seed = {}
        for s in seeds:
            print(f"\n== seed {s} ({seeds.index(s) + 1} of {n_seeds}) ==")
            run_one(with_overrides(cfg, seed=s), run_dir / f"seed{s}", sweep)
            per_seed[s] = json.loads((run_dir / f"seed{s}" / "results.json").read_text())
        table = write_seed_summary(run_dir, cfg.profile, per_seed)
        print(f"\nRun {run_dir}\n\n{table}")
    print(f"Secure aggregation: {'on' if cfg.secagg.enabled else 'OFF'}; "
          f"membership-inference audit: {'on' if cfg.mia.enabled else 'OFF'}.")  # fmt: skip
    return 0


def run_one(cfg: Config, run_dir: Path, sweep) -> str:
    """One seed: the dataset, every method (or the sweep), the report; returns the table."""
    run_dir.mkdir(parents=True, exist_ok=True)
    # public pretraining is computed once per run and shared by the server and the attacker
    os.environ.setdefault(CACHE_ENV, str(run_dir / "cache"))
    config_path = run_dir / "config.json"
    config_path.write_text(json.dumps(cfg.model_dump(mode="json"), indent=1) + "\n")
    (run_dir / "versions.json").write_text(json.dumps(collect_versions(), indent=1) + "\n")
    t0 = time.perf_counter()
    manifest = build_dataset(cfg, run_dir / "data")
    print(f"\nDataset per site:\n\n{summary_markdown(manifest['summary'])}")
    if sweep or any(get_method(m).dp for m in cfg.fl.methods):
        # fail before any process starts, naming the site
        check_dp(cfg, manifest, [sweep[2]] if sweep else None)
    if sweep:
        results = run_sweep(cfg, run_dir, *sweep)
    else:
        results = {
            m: run_method(cfg, config_path, m, run_dir, run_dir / "data") for m in cfg.fl.methods
        }
    return write_report(cfg, run_dir, results, manifest, time.perf_counter() - t0)
