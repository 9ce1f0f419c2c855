"""`fedonco server`: one run, or a campaign of runs one after another on one port.

Sites dial this server; it never dials them. Each run is a ``server.app.Server``; the gRPC
service (``server/servicer.py``) is opened once and handed each run's round state in turn.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import torch

from common.config import DEFAULT_ROSTER
from common.io import GROUP_DIR, secure_dir, write_json_atomic
from common.layout import RunLayout
from common.methods import METHOD_NAMES, get_method
from common.records import read_state
from common.versions import collect_versions
from common.wire.channel import MAX_MESSAGE_BYTES, MiB, create_server
from common.wire.rpc import federation_pb2_grpc as pb_grpc
from server.app import Server
from server.options import ServerOptions
from server.servicer import FederationServicer

log = logging.getLogger(__name__)


def wait_for_file(path: Path, timeout_s: float, what: str, stop: threading.Event) -> None:
    """Block until ``path`` exists (bounded; ``stop`` ends it early): the judge marks the end."""
    log.info(
        "holding the federation open until %s appears (%s; at most %.0fs)", path, what, timeout_s
    )
    end = time.monotonic() + timeout_s
    while not path.exists() and not stop.is_set():
        if time.monotonic() > end:
            log.warning("%s did not appear within %.0fs; finishing anyway", path, timeout_s)
            return
        stop.wait(1.0)


def federation_rpc_budget(sites: int) -> int:
    """Worker threads (= concurrent calls) the federation service needs for ``sites`` sites: each
    holds at most a long poll, a push and a heartbeat at once; 16 more for health checks and
    strays. Fewer starves the pool (a long poll blocks its thread: measured with
    bench/perf/perf_scale.py, 16 threads made a 50-site round wait 4.6 s for 0.4 s of work) and
    the calls beyond the cap are refused (RESOURCE_EXHAUSTED), so the cap is sized, not fixed."""
    return 3 * sites + 16


def federation_message_limit(cfg, methods) -> int:
    """The largest legal request of a federation: a site's update (float32) or masked vector
    (uint32) of the biggest model among ``methods``, twice over for slack, plus 1 MiB for names,
    shapes and metrics. Anything larger is refused by gRPC before it is decoded."""
    from common.model import get_params, model_for

    entries = max(
        sum(v.size for v in get_params(model_for(cfg.for_method(m), m)).values()) for m in methods
    )
    return 2 * 4 * entries + MiB


def serve_campaign(
    runs,
    address: str,
    port_file: Path | None = None,
    tls_dir: Path | None = None,
    hold=None,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    sites: int = len(DEFAULT_ROSTER),
) -> list[dict]:
    """Serve one run after another on one port: ``runs`` are zero-argument factories of Servers
    (built only when their turn comes). Sites registered with ``runs_left > 0`` re-register for
    the next run. ``hold``: after the last run, keep serving until hold(stop) returns (compose: the
    sites linger until the server goes away, so nobody exits before the judge is done).
    ``sites``: how many sites may connect at once (sizes the service's threads and call cap)."""
    from common.wire.tls import server_credentials

    servicer = FederationServicer(authenticate=tls_dir is not None)
    creds = server_credentials(tls_dir) if tls_dir else None
    budget = federation_rpc_budget(sites)
    server, port = create_server(
        address,
        [(pb_grpc.add_FederationServicer_to_server, servicer)],
        credentials=creds,
        max_receive_bytes=max_message_bytes,
        max_workers=budget,
        max_concurrent_rpcs=budget,
    )
    server.start()
    if port_file:
        port_file.write_text(str(port))
    transport = "mutual TLS" if creds else "plaintext"
    log.info(
        "federation listening on port %d over %s%s",
        port,
        transport,
        " (a CA-signed client certificate naming the site is required)" if creds else "",
    )
    stop = threading.Event()

    def _term(signum, _frame):
        log.warning("signal %d: stopping after the current step", signum)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _term)
    results = []
    try:
        for i, make in enumerate(runs):
            srv = make()
            srv.transport = transport  # recorded in result.json
            left = len(runs) - 1 - i
            servicer.open_run(srv.state, srv.run_info(left, linger=hold is not None))
            results.append(srv.serve_rounds(stop))
            if stop.is_set():
                break
        if hold and not stop.is_set():
            hold(stop)
        return results
    finally:
        server.stop(grace=1.0)


def run_server_cmd(args: ServerOptions) -> int:
    from common.config import load_config, with_device, with_overrides
    from common.device import resolve_device
    from common.wire.tls import plaintext_allowed

    cfg = load_config(args.config)
    if args.rounds is not None:
        cfg = with_overrides(cfg, **{"train.rounds": args.rounds})
    cfg = with_device(cfg, args.device)
    device = resolve_device(cfg.train.device)  # one line, before anything starts, if no CUDA
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // 2))
    tls_dir = Path(args.tls_dir) if args.tls_dir else None
    if tls_dir is None:
        plaintext_allowed(args.address, args.insecure, "server")
    hold = None
    if args.hold_until:
        marker = Path(args.hold_until)
        hold = lambda stop: wait_for_file(marker, args.hold_timeout, "the audit", stop)  # noqa: E731
    if args.methods:  # a campaign: one run per method, in RUN_DIR/<method>
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        federated = [m for m in METHOD_NAMES if get_method(m).kind == "federated"]
        bad = [m for m in methods if m not in federated]
        if bad or not methods:
            raise ValueError(
                f"--methods: not a federated method {bad} (choose from "
                f"{', '.join(federated)}; pooled and local are reference rows "
                "that `fedonco bench` trains in one process)"
            )
        if not args.run_dir:
            raise ValueError("--methods needs --run-dir (the campaign directory)")
        root = Path(args.run_dir)
        root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(root / "config.json", cfg.model_dump(mode="json"))
        write_json_atomic(root / "versions.json", collect_versions(device))
        runs = [
            lambda m=m: Server(cfg, m, Path(args.data), root / m, resume=False, device=device)
            for m in methods
        ]
        results = serve_campaign(
            runs,
            args.address,
            _port_file(args),
            tls_dir,
            hold,
            federation_message_limit(cfg, methods),
            sites=len(cfg.sites),
        )
        for r in results:
            print(json.dumps({k: r[k] for k in ("method", "rounds", "dice", "final_model_sha256")}))
        return 0
    run_dir = Path(args.resume or args.run_dir)
    if not args.resume and not args.run_dir:
        raise ValueError("give --run-dir (new run) or --resume RUN_DIR")
    method = args.method
    if args.resume and method is None:
        method = read_state(RunLayout(run_dir).state).method
    if method is None:
        raise ValueError("give --method (fedavg, fedprox or fedbn)")
    fresh = not args.resume and not (run_dir.is_dir() and any(run_dir.iterdir()))
    made: list[Server] = []
    try:  # the run is open before the port is announced (a site's first call finds it)
        secure_dir(run_dir, GROUP_DIR)  # checkpoints, ledger, logs: never writable by others
        made.append(
            Server(cfg, method, Path(args.data), run_dir, resume=bool(args.resume), device=device)
        )
        limit = federation_message_limit(cfg, [method])
        (result,) = serve_campaign(
            [lambda: made[0]],
            args.address,
            _port_file(args),
            tls_dir,
            hold,
            limit,
            sites=len(cfg.sites),
        )
    except KeyboardInterrupt:  # SIGTERM or Ctrl-C: the rounds done so far are checkpointed
        done = made[0].done if made else 0
        if fresh and done == 0:
            shutil.rmtree(run_dir, ignore_errors=True)
            log.warning("stopped before the first round; %s removed (nothing to resume)", run_dir)
        else:
            log.warning("stopped after round %d; continue with --resume %s", done, run_dir)
        return 143
    except BaseException:
        if fresh and not (made and made[0].done):  # a failed start (e.g. the port is taken): a
            # corrected retry starts clean instead of finding a run "already" there
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    print(json.dumps({k: result[k] for k in ("method", "rounds", "dice", "final_model_sha256")}))
    return 0


def _port_file(args) -> Path | None:
    return Path(args.port_file) if args.port_file else None
