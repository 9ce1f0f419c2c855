"""`fedonco judge`: audit and report a campaign whose parts run apart (docker compose).

In `fedonco bench` one orchestrator starts everything on 127.0.0.1. In compose the server, the
five sites and the release service are separate containers; the judge is the benchmark's referee
beside them. It never talks to the federation: it reads what the server wrote into the campaign
directory (``RUN_DIR/<method>/result.json``), draws member and non-member candidates from its own
copy of the dataset, and has the attacker (a separate process that holds only the attacker pool,
the unlabeled candidates and the release service's address) query the released models by name.
At the end it writes the report and ``RUN_DIR/audit.done``, which tells the other containers that
the campaign is over; it writes the marker even when it fails, so nobody waits for nothing.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import grpc

from bench.audit import attacker_pool, audit
from bench.report import write_report
from common.config import DEFAULT_SITE_NAMES, load_config
from common.data.store import read_manifest
from common.io import write_json_atomic
from common.layout import RunLayout
from common.methods import METHOD_NAMES
from common.records import read_result

log = logging.getLogger(__name__)
DONE = "audit.done"


def wait_for(path: Path, timeout_s: float, what: str) -> None:
    end = time.monotonic() + timeout_s
    while not path.is_file():
        if time.monotonic() > end:
            raise TimeoutError(f"{what}: {path} did not appear within {timeout_s:.0f}s")
        time.sleep(1.0)


def model_available(address: str, name: str, timeout_s: float, tls_dir: Path | None) -> bool:
    """Whether the release service can load ``name`` (retrying while it is not there yet)."""
    from attacks.remote import ReleaseServiceError, RemoteModel

    end = time.monotonic() + timeout_s
    while True:
        try:
            RemoteModel(address, name, timeout=10.0, tls_dir=tls_dir)
            return True
        except ReleaseServiceError as err:
            if err.code != grpc.StatusCode.NOT_FOUND or time.monotonic() > end:
                if err.code == grpc.StatusCode.NOT_FOUND:
                    return False
                raise
            time.sleep(1.0)


def release_names(
    run_dir: Path,
    method: str,
    result: dict,
    address: str,
    wait_s: float,
    tls_dir: Path | None = None,
    sites: list[str] | None = None,
) -> dict:
    """Names of the method's released model(s) on the release service: the server's global
    model under the campaign directory, or (FedBN) each site's own model, which the site
    publishes under ``<run_id>/site<ID>`` when the run ends (a site that died has none).
    ``sites``: the roster's site IDs (default A-E)."""
    if (RunLayout(run_dir / method).release / "release.json").is_file():
        return {"all": f"{run_dir.name}/{method}/release"}
    names = {}
    for s in sites or DEFAULT_SITE_NAMES:
        name = f"{result['run_id']}/site{s}"
        if model_available(address, name, wait_s, tls_dir):
            names[s] = name
        else:
            log.warning("%s: site %s published no model (it may have dropped out)", method, s)
    return names


def not_audited(
    method: str, global_release: bool, names: dict, mia: dict, sites: list[str] | None = None
) -> list[str]:
    """What of ``method`` the audit missed: its global model, or (a method whose sites release
    their own models) each site of the roster (``sites``, default A-E) that published none; and
    an audit that failed outright."""
    expected = {"all"} if global_release else set(sites or DEFAULT_SITE_NAMES)
    out = [method if s == "all" else f"{method} (site {s})" for s in sorted(expected - set(names))]
    if mia.get("error"):
        out.append(f"{method} ({mia['error']})")
    return out


def judge(
    run_dir: Path,
    data_dir: Path,
    address: str,
    methods: list[str],
    timeout_s: float,
    tls_dir: Path | None = None,
) -> int:
    cfg_path = run_dir / "config.json"
    log.info("judge: waiting for the server's campaign config (%s)", cfg_path)
    wait_for(cfg_path, timeout_s, "the server's campaign config")
    cfg = load_config(cfg_path)
    manifest = read_manifest(data_dir)
    attacker_pool(data_dir, run_dir / "attacker-pool")  # once, before the first audit
    t0 = time.perf_counter()
    results, unaudited = {}, []
    for method in methods:
        mdir = run_dir / method
        layout = RunLayout(mdir)
        log.info("waiting for %s to finish (%s)", method, layout.result)
        wait_for(layout.result, timeout_s, method)
        result = read_result(layout.result).to_json()
        result["dir"] = str(mdir)
        if cfg.mia.enabled:
            names = release_names(run_dir, method, result, address, 60.0, tls_dir, cfg.site_names)
            result["mia"] = audit(cfg, cfg_path, mdir, data_dir, result, names, address, tls_dir)
            global_release = (layout.release / "release.json").is_file()
            unaudited += not_audited(method, global_release, names, result["mia"], cfg.site_names)
            dice = result.get("dice")
            log.info(
                "%s: Dice %s, MIA AUC %s",
                method,
                "n/a" if dice is None else f"{dice:.3f}",
                result["mia"].get("auc"),
            )
        results[method] = result
    table = write_report(cfg, run_dir, results, manifest, time.perf_counter() - t0)
    print(f"\nRun {run_dir}\n\n{table}")
    if unaudited:  # exit 0 means every released model was audited
        log.error("not audited: %s", ", ".join(unaudited))
        print(f"\nNOT AUDITED (no released model): {', '.join(unaudited)}")
        return 1
    return 0


def run_judge_cmd(args) -> int:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHOD_NAMES]
    if bad or not methods:
        raise ValueError(f"--methods: unknown {bad} (choose from {', '.join(METHOD_NAMES)})")
    run_dir = Path(args.run_dir)
    status = "failed"
    try:
        tls_dir = Path(args.tls_dir) if args.tls_dir else None
        rc = judge(run_dir, Path(args.data), args.release, methods, args.timeout, tls_dir)
        status = "ok" if rc == 0 else "incomplete: a released model was not audited"
        return rc
    finally:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / DONE, {"status": status, "time": time.time()})
