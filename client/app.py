"""`fedonco client --site S`: one hospital site. It dials the server (never the reverse), pulls
tasks, trains on its own slices only, and pushes its weighted update.

Local state that never leaves the site (FedBN's normalisation layers) is kept per round and
persisted under ``--state-dir``, so a re-run round (after a server restart) starts from exactly
the state it started from the first time, and a restarted client picks up where it was.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import torch
from torch.utils.data import DataLoader

from client.options import ClientOptions
from client.secure import PendingUpdate, advertise_request, stage_answer
from common.config import Config
from common.data.loader import ct_dataset, load_arrays
from common.data.store import read_manifest
from common.device import device_record
from common.evaluation import evaluate_sums
from common.fl.instructions import FitInstructions, TrainMode
from common.fl.strategy import split_extras
from common.io import load_npz, safe_name, save_npz, secure_dir
from common.keybind import KeySigner, KeyVerifier
from common.methods import get_method
from common.model import get_params, model_for, set_params
from common.modelcheck import check_model
from common.release import export_release, release_info
from common.secagg import SecAggClient, SecAggError, flatten, round_digest
from common.training.dp.randomness import (
    SEEDED,
    SEEDED_REFUSAL,
    AttemptLog,
    NoiseSource,
)
from common.training.dp.settings import DPConfigError, PrivacyBudgetExhausted
from common.training.local import train_local, weighted_contribution
from common.training.scaffold import PREFIX as CONTROL
from common.training.scaffold import ControlVariates
from common.transforms import to_inputs
from common.wire.channel import create_channel
from common.wire.rpc import federation_pb2 as pb
from common.wire.rpc import federation_pb2_grpc as pb_grpc
from common.wire.serde import (
    ndarrays_to_proto,
    proto_to_ndarrays,
    scalars_from_proto,
    scalars_to_proto,
    tensors_nbytes,
)

log = logging.getLogger(__name__)
# the server is down, slow, or (RESOURCE_EXHAUSTED) at its concurrent-call cap: try again later
RETRYABLE = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
)


class SiteClient:
    def __init__(
        self,
        cfg: Config,
        site: str,
        server: str,
        data_dir: Path,
        state_dir: Path,
        retry_timeout_s: float = 0.0,
        tls_dir: Path | None = None,
        publish_dir: Path | None = None,
        allow_seeded_noise: bool = False,
        device: torch.device | None = None,
    ) -> None:
        self.allow_seeded_noise = allow_seeded_noise
        self.device = torch.device(device or "cpu")  # where this site trains and evaluates
        self.device_info = device_record(self.device)  # reported with every update
        self._check_randomness(cfg)  # before anything else: a deployed site refuses seeded noise
        if site not in cfg.site_names:
            raise ValueError(
                f"site {site!r} is not in the profile's roster ({', '.join(cfg.site_names)})"
            )
        self.cfg, self.site, self.server = cfg, site, server
        self.data_dir, self.retry_timeout_s = Path(data_dir), retry_timeout_s
        self.state_root, self.publish_dir = Path(state_dir), publish_dir
        self.train_set = ct_dataset(data_dir, "train", site)  # this site's slices only
        if len(self.train_set) == 0:
            raise ValueError(f"site {site} has no training slices in {data_dir}")
        self.model = None  # built once the run's method is known (register)
        self.run_id, self.method = "", ""
        self.runs_left = 0  # runs the server will open after this one (a campaign)
        self.linger = False
        self.dp = None  # client.dp_site.DPState, at the first DP round
        self.ddp = None  # common.training.ddp.DDPSite, at the first distributed-DP round
        self.secagg: SecAggClient | None = None  # this round's secure-aggregation state
        self.pending: PendingUpdate | None = None
        creds, self.tls_dir = None, tls_dir
        # mutual TLS: this site signs its secure-aggregation keys with its certificate's key and
        # checks its peers' against the CA and the roster's CNs (common/keybind.py); without TLS
        # there is no certificate and neither happens
        self.key_signer: KeySigner | None = None
        self.key_verifier: KeyVerifier | None = None
        if tls_dir is not None:
            from common.wire.tls import certificate_cn, channel_credentials

            cn, want = certificate_cn(tls_dir), cfg.site_certs.get(site)
            if cn != want:
                raise ValueError(
                    f"{tls_dir}: the client certificate's common name is {cn!r}, the roster "
                    f"gives site {site!r} {want!r} (the server would refuse it)"
                )
            creds = channel_credentials(tls_dir)
            self.key_signer = KeySigner.from_tls_dir(tls_dir)
            self.key_verifier = KeyVerifier.from_tls_dir(tls_dir, cfg.site_certs)
        self.stub = pb_grpc.FederationStub(create_channel(server, credentials=creds))

    # -- local state ----------------------------------------------------------------------------

    def _load_local(self) -> dict[int, dict[str, np.ndarray]]:
        out = {}
        for p in self.state_dir.glob("local_round_*.npz"):
            out[int(p.stem.split("_")[-1])] = load_npz(p)
        return out

    def _local_before(self, rnd: int, keys: list[str]) -> dict[str, np.ndarray]:
        """Non-shared entries as they were at the end of the last round before ``rnd``."""
        earlier = [r for r in self.local if r < rnd]
        src = self.local[max(earlier)] if earlier else self.initial
        return {k: src[k] for k in keys}

    def _kept_before(self, rnd: int) -> dict[str, np.ndarray]:
        """The extra state (SCAFFOLD's c_i) kept at the end of the last round before ``rnd``."""
        earlier = [r for r in self.local if r < rnd]
        src = self.local[max(earlier)] if earlier else {}
        return {k: v for k, v in src.items() if k.startswith(CONTROL)}

    def _save_local(self, rnd: int, values: dict[str, np.ndarray]) -> None:
        self.local[rnd] = values
        save_npz(self.state_dir / f"local_round_{rnd:04d}.npz", values)
        for r in sorted(self.local)[:-2]:  # keep the last two rounds
            self.local.pop(r)
            (self.state_dir / f"local_round_{r:04d}.npz").unlink(missing_ok=True)

    # -- RPC with retries -----------------------------------------------------------------------

    def _rpc(self, method, request, timeout: float = 30.0):
        """Call with deadline and wait_for_ready; retry with backoff while the server is down (for
        ever, or ``retry_timeout_s`` when > 0), one log line per attempt."""
        delay, start, attempt = 0.2, time.monotonic(), 0
        while True:
            left = self.retry_timeout_s - (time.monotonic() - start)
            deadline = min(timeout, max(1.0, left / 2)) if self.retry_timeout_s else timeout
            try:
                return method(request, timeout=deadline, wait_for_ready=True)
            except grpc.RpcError as err:
                if err.code() not in RETRYABLE:
                    raise
                waited = time.monotonic() - start
                if self.retry_timeout_s and waited > self.retry_timeout_s:
                    raise ValueError(
                        f"site {self.site}: server {self.server} unreachable for "
                        f"{waited:.0f}s ({err.code().name}); giving up "
                        "(--retry-timeout)"
                    ) from None
                self._check_tls()  # gRPC says UNAVAILABLE for every TLS mistake: which is it?
                attempt += 1
                log.info(
                    "server %s not reachable (%s, attempt %d, %.0fs so far); retrying in %.1fs",
                    self.server,
                    err.code().name,
                    attempt,
                    waited,
                    delay,
                )
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _check_tls(self) -> None:
        """Make the TLS handshake before any RPC and stop with its cause if it cannot work
        (unknown CA, a server name not on the certificate, a refused client certificate, a
        plaintext server): retrying would not help."""
        if self.tls_dir is None:
            return
        from common.wire.tls import diagnose_tls

        cause = diagnose_tls(self.server, self.tls_dir)
        if cause:
            raise ValueError(f"site {self.site}: no TLS to {self.server}: {cause}")

    def register(self, previous_run: str = "") -> None:
        """Join the open run (one that is not ``previous_run``: between two runs of a campaign
        the server still answers for the finished one for a moment)."""
        log.info(
            "site %s: connecting to %s (waits while the server is not up)", self.site, self.server
        )
        info = {"n_train": len(self.train_set), "profile": self.cfg.shape_fingerprint()}
        request = pb.RegisterSiteRequest(site_id=self.site, info=scalars_to_proto(info))
        if not previous_run:
            self._check_tls()
        end = time.monotonic() + (self.retry_timeout_s or 600.0)  # for the next run to open
        while True:
            try:
                resp = self._rpc(self.stub.RegisterSite, request)
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.FAILED_PRECONDITION:
                    raise
                raise ValueError(
                    f"site {self.site}: the server refused it: {err.details()}"
                ) from None
            if resp.run_id != previous_run:
                break
            if time.monotonic() > end:
                raise TimeoutError(f"the server opened no run after {previous_run} in time")
            time.sleep(0.5)
        # names from the network become paths (state dir, publish dir): checked first
        self.run_id = safe_name(resp.run_id, "the server's run id")
        self.heartbeat_s = resp.heartbeat_interval_s
        info = scalars_from_proto(resp.info)
        method = safe_name(info.get("method", ""), "the server's method")
        self.method = get_method(method).name  # a server always names it
        self.runs_left = int(info.get("runs_left", 0))
        self.linger = bool(info.get("linger", 0))
        # Local state lives per method: a campaign's runs never see each other's norm layers.
        self.state_dir = self.state_root / self.method / f"site{self.site}"
        secure_dir(self.state_dir)  # 0700: the site's own (its DP key, accountant, norms)
        self.local: dict[int, dict[str, np.ndarray]] = self._load_local()
        self.traits = get_method(self.method)
        self.run_cfg = self.cfg.for_method(self.method)  # the method's own recipe, if any
        self.model = model_for(self.run_cfg, self.method).to(self.device)
        self.initial = get_params(self.model)
        self.dp = self.ddp = None  # built at the first round whose config asks for DP
        self.noise: NoiseSource | None = None  # this site's DP randomness, at the first DP round
        self.attempts = AttemptLog(self.state_dir, self.run_id)
        log.info("site %s joined run %s (%s)", self.site, self.run_id, self.method)

    def _check_randomness(self, cfg: Config) -> None:
        if cfg.dp.randomness == SEEDED and not self.allow_seeded_noise:
            raise ValueError(SEEDED_REFUSAL)

    def _noise_source(self) -> NoiseSource:
        """The site's DP randomness for this run: its secret key (made on first use, 0600, in
        the state root), or the public seed's in a simulation the operator allowed."""
        if self.noise is None:
            self._check_randomness(self.run_cfg)
            self.noise = NoiseSource.for_site(
                self.run_cfg.dp.randomness,
                state_root=self.state_root,
                site=self.site,
                seed=self.run_cfg.seed,
                run_id=self.run_id,
                method=self.method,
            )
            if self.noise.mode == SEEDED:
                log.warning(
                    "site %s: DP noise from the public run seed (seeded simulation): "
                    "the server can regenerate and subtract it",
                    self.site,
                )
        return self.noise

    # -- tasks ----------------------------------------------------------------------------------

    def _with_heartbeat(self, rnd: int, fn):
        stop = threading.Event()

        def beat():
            while not stop.wait(self.heartbeat_s):
                with contextlib.suppress(grpc.RpcError):
                    self.stub.Heartbeat(
                        pb.HeartbeatRequest(site_id=self.site, run_id=self.run_id, round=rnd),
                        timeout=5,
                    )

        t = threading.Thread(target=beat, daemon=True)
        t.start()
        try:
            return fn()
        finally:
            stop.set()
            t.join()

    def fit(self, task: pb.FitTask) -> None:
        t0 = time.perf_counter()
        tensors = proto_to_ndarrays(task.tensors)
        shared, extras = split_extras(tensors)
        control = None  # SCAFFOLD's correction, when the orders ask for it
        try:  # the server's orders: typed and range-checked before anything trains on them
            scalars = scalars_from_proto(task.config)
            orders = FitInstructions.from_scalars(scalars)
            if orders.round != task.round:
                raise ValueError(
                    f"fit config: round {orders.round} in a task of round {task.round}"
                )
            if extras and not orders.control_variates:
                raise ValueError(f"fit task: extra tensors {sorted(extras)[:3]} not asked for")
            local_keys = sorted(set(self.initial) - set(shared))
            set_params(self.model, {**shared, **self._local_before(task.round, local_keys)})
            if orders.control_variates:  # SCAFFOLD: checks the server's c before training
                control = ControlVariates(self.model, extras, self._kept_before(task.round))
            # a model crafted to make this site's update reveal its inputs (trap weights) is
            # refused before anything trains on the site's data (common/modelcheck.py)
            check_model(self.model, self._check_batch(orders.batch_size))
        except ValueError as err:
            self._decline(task.round, str(err))
            return
        # secure aggregation binds this site's masks to the round it was sent (a server sending
        # sites different models or orders cannot unmask their sum: common.secagg.mask_context)
        digest = round_digest(tensors, scalars) if orders.secagg else b""
        t_decode = time.perf_counter() - t0
        if orders.mode is TrainMode.DDP:
            self._ddp_step(task.round, shared, orders, t_decode, digest)
            return
        if orders.mode is TrainMode.DP:
            if self.dp is None:
                from client.dp_site import DPState  # Opacus only at a DP site

                self.dp = DPState(
                    self.run_cfg,
                    len(self.train_set),
                    self.state_dir,
                    self.run_id,
                    self._noise_source(),
                    self.attempts,
                )
            try:
                metrics = self.dp.train(
                    self.model, self.train_set, orders, shared, grad_hook=control
                )
            except PrivacyBudgetExhausted as err:
                self._decline(task.round, str(err))
                return
        else:
            loader = DataLoader(self.train_set, batch_size=orders.batch_size, shuffle=True)
            metrics = train_local(
                self.model,
                loader,
                epochs=orders.local_epochs,
                lr=orders.lr,
                seed=orders.seed,
                proximal_mu=orders.proximal_mu,
                global_params=shared,
                optimizer=self.run_cfg.train.optimizer,
                grad_hook=control,
            )
        metrics.update(self.device_info)
        new = get_params(self.model)
        up = {k: new[k] for k in shared}  # what leaves: the shared weights, and any extras
        keep = {k: new[k] for k in local_keys}  # what stays: norm layers, a control variate
        if control is not None:
            kept, delta = control.finish()
            keep.update(kept)
            up.update(delta)
        if keep:
            self._save_local(task.round, keep)
        n = len(self.train_set)
        if orders.secagg:
            update = flatten(up, sorted(up)) * n
            pending = PendingUpdate(task.round, update, n, digest=digest)
            self._advertise(task.round, pending, metrics, t_decode)
            return
        t1 = time.perf_counter()
        tensors = ndarrays_to_proto(weighted_contribution(up, n))
        metrics.update(
            decode_s=t_decode,
            encode_s=time.perf_counter() - t1,
            bytes_up=float(tensors_nbytes(tensors)),
        )
        request = pb.PushUpdateRequest(
            site_id=self.site,
            run_id=self.run_id,
            round=task.round,
            tensors=tensors,
            num_examples=n,
            metrics=scalars_to_proto(metrics),
        )
        if not self._push(self.stub.PushUpdate, request, task.round):
            return
        loss = metrics.get("loss")  # a DP round reports no un-noised loss
        log.info(
            "site %s: round %d trained (%s, %.1fs)",
            self.site,
            task.round,
            "DP" if loss is None else f"loss {loss:.4f}",
            metrics.get("train_time_s", 0.0),
        )

    def release(self) -> None:
        """FedBN: the site's own model (final shared weights + its norm layers) is what it
        releases; with every other method the server releases the one global model."""
        if self.traits.release != "per_site" or not self.local:
            return
        params = get_params(self.model)
        info = release_info(self.run_cfg, self.method, params, site=self.site)
        export_release(self.state_dir / "release", params, info)
        log.info("site %s released its model to %s", self.site, self.state_dir / "release")
        if self.publish_dir is not None:  # e.g. the release service's model store
            export_release(self.publish_dir / self.run_id / f"site{self.site}", params, info)

    def _check_batch(self, batch_size: int) -> torch.Tensor:
        """The site's first training slices (a batch of the orders' size), where its model is:
        what ``check_model`` runs the received model on."""
        k = max(1, min(batch_size, len(self.train_set)))
        x = torch.stack([self.train_set[i][0] for i in range(k)])
        return x.to(next(self.model.parameters()).device)

    def _decline(self, rnd: int, reason: str) -> None:
        log.warning("site %s: sitting out round %d: %s", self.site, rnd, reason)
        request = pb.DeclineRequest(site_id=self.site, run_id=self.run_id, round=rnd, reason=reason)
        self._push(self.stub.Decline, request, rnd)

    def evaluate(self, task: pb.EvaluateTask) -> None:
        shared = proto_to_ndarrays(task.tensors)
        local_keys = sorted(set(self.initial) - set(shared))
        set_params(self.model, {**shared, **self._local_before(task.round + 1, local_keys)})
        manifest = read_manifest(self.data_dir)
        images, masks, _, _ = load_arrays(self.data_dir, "test", self.site, manifest)
        sums = evaluate_sums(
            self.model,
            to_inputs(images, manifest["window"]),
            masks,
            self.run_cfg.train.eval_batch_size,
        )
        request = pb.PushEvaluationRequest(
            site_id=self.site,
            run_id=self.run_id,
            round=task.round,
            num_examples=len(images),
            metrics=scalars_to_proto(sums),
        )
        self._push(self.stub.PushEvaluation, request, task.round)

    def _push(self, method, request, rnd: int) -> bool:
        """Deliver a result. One the server no longer wants (the round moved on, or was re-opened
        after a server restart) is not fatal: the site goes back to pulling tasks."""
        try:
            self._rpc(method, request, timeout=120)
            return True
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.ALREADY_EXISTS:  # delivered before a lost reply
                return True
            if err.code() == grpc.StatusCode.FAILED_PRECONDITION:
                log.warning(
                    "site %s: round %d result not accepted: %s", self.site, rnd, err.details()
                )
                return False
            raise

    # -- secure aggregation ---------------------------------------------------------------------

    def _ddp_step(
        self, rnd: int, shared: dict, orders: FitInstructions, t_decode: float, digest: bytes
    ) -> None:
        """Distributed DP-SGD: this site's rounded clipped gradient sum over its Poisson sample
        plus its Skellam share, as an integer vector that only secure aggregation sees."""

        noise = self._noise_source()
        try:
            if self.ddp is None:  # Opacus' wrapper, once (slow to import; the fit's heartbeats run)
                from common.training.ddp import DDPSite

                self.ddp = DDPSite(self.model)
            attempt = self.attempts.next(rnd)  # recorded before anything is drawn: fresh shares
            p = orders.ddp
            vec, metrics = self.ddp.noisy_sum(
                self.train_set,
                sorted(shared),
                q=p.q,
                clip=p.clip,
                scale=p.scale,
                mu_share=p.mu_share,
                rngs=noise.ddp_rngs(rnd, attempt),
                chunk=orders.batch_size,
            )
        except DPConfigError as err:  # the server's round parameters: network input
            self._decline(rnd, str(err))
            return
        metrics = {**metrics, "randomness": noise.mode, "attempt": attempt, **self.device_info}
        n = len(self.train_set)
        self._advertise(
            rnd, PendingUpdate(rnd, vec, n, ring=True, digest=digest), metrics, t_decode
        )

    def _advertise(self, rnd: int, pending: PendingUpdate, metrics: dict, t_decode: float):
        """Keep the update here; send only fresh public keys (and n_k, not secret)."""
        settings = self.run_cfg.secagg  # the federation's t and graph: a server may not change them
        self.secagg = SecAggClient(
            self.site,
            self.run_id,
            rnd,
            expect=(settings.threshold, settings.neighbours),
            verify=self.key_verifier,  # mutual TLS: every peer's keys signed by its certificate
        )
        self.pending = pending
        metrics.update(decode_s=t_decode)
        request = advertise_request(
            self.site, self.run_id, self.secagg, pending, metrics, signer=self.key_signer
        )
        self._push(self.stub.AdvertiseKeys, request, rnd)

    def secagg_stage(self, task: pb.SecAggTask) -> None:
        rnd, stage = task.round, task.WhichOneof("stage")
        if self.secagg is None or self.pending is None or self.pending.round != rnd:
            # e.g. restarted after advertising keys: this round's update and keys are gone. Say
            # so at once: the server counts the site as dropped (the survivors' shares recover
            # the sum) instead of offering the stage again until the round times out.
            self._decline(rnd, f"restarted: no update for the {stage} stage of round {rnd}")
            return
        try:
            name, request = stage_answer(self.site, self.run_id, self.secagg, self.pending, task)
            self._push(getattr(self.stub, name), request, rnd)
        except SecAggError as err:  # e.g. asked for both shares of one peer: refuse, and say so
            # The reason holds nothing the server did not send (it names the check that failed);
            # declining ends the stage for this site at once, where silence held the round until
            # its timeout with the stage offered (and refused, and logged) again every poll.
            log.error(
                "site %s: refused secure-aggregation %s of round %d: %s", self.site, stage, rnd, err
            )
            self._decline(rnd, f"refused the {stage} stage: {err}")

    def run(self) -> int:
        """Take part in the open run, and in every later run of a campaign."""
        self.register()
        while self.run_one():
            self.register(previous_run=self.run_id)
        if self.linger:
            self.wait_for_server_exit()
        return 0

    def wait_for_server_exit(self) -> None:
        """Compose: stay until the server goes away (it holds the federation open until the
        audit is over), so no site container exits before the judge."""
        log.info("site %s: all runs done; staying until the server closes", self.site)
        request = pb.HeartbeatRequest(site_id=self.site, run_id=self.run_id)
        while True:
            try:
                self.stub.Heartbeat(request, timeout=10)
            except grpc.RpcError:
                return
            time.sleep(2.0)

    def run_one(self) -> bool:
        """Work the open run until it finishes; True when the server announced another run.

        A task handed out again right after it was handled (the server has not moved on yet)
        is met with a growing pause, never a tight loop of PullTask calls."""
        last, previous, pause = 0, None, 0.0
        while True:
            resp = self._rpc(
                self.stub.PullTask,
                pb.PullTaskRequest(site_id=self.site, run_id=self.run_id, round=last),
            )
            kind = resp.WhichOneof("task")
            if kind in ("fit", "evaluate", "secagg"):
                task = getattr(resp, kind)
                key = (kind, task.round, task.WhichOneof("stage") if kind == "secagg" else "")
                pause = min(max(pause * 2, 0.05), 2.0) if key == previous else 0.0
                if pause:
                    time.sleep(pause)
                previous = key
            if kind == "fit":
                # heartbeats from the task's arrival: checking the model, setting up DP-SGD and
                # training all count (a paper-size pre-fit check took ~6 s of the 7 s a silent
                # site is given, with five sites on two cores)
                self._with_heartbeat(resp.fit.round, functools.partial(self.fit, resp.fit))
                last = resp.fit.round
            elif kind == "evaluate":
                self.evaluate(resp.evaluate)
            elif kind == "secagg":
                self.secagg_stage(resp.secagg)
            elif kind == "finished":
                self.release()
                log.info(
                    "site %s: run finished after %d rounds",
                    self.site,
                    resp.finished.rounds_completed,
                )
                return self.runs_left > 0
            elif kind == "wait" and resp.wait.retry_after_s > 0:
                time.sleep(resp.wait.retry_after_s)


def run_client_cmd(args: ClientOptions) -> int:
    from common.config import load_config, with_device
    from common.device import resolve_device

    cfg = with_device(load_config(args.config), args.device)
    device = resolve_device(cfg.train.device)  # one line, before anything starts, if no CUDA
    torch.set_num_threads(args.threads)
    site = args.site or os.environ.get("FEDONCO_SITE")
    server = args.server or os.environ.get("FEDONCO_SERVER")
    if not site or not server:
        raise ValueError("give --site and --server (or FEDONCO_SITE / FEDONCO_SERVER)")
    tls_dir = Path(args.tls_dir) if args.tls_dir else None
    if tls_dir is None:
        from common.wire.tls import plaintext_allowed

        plaintext_allowed(server, args.insecure, f"site {site}")
    client = SiteClient(
        cfg,
        site,
        server,
        Path(args.data),
        Path(args.state_dir or args.data + "-state"),
        retry_timeout_s=args.retry_timeout,
        tls_dir=tls_dir,
        publish_dir=Path(args.publish_dir) if args.publish_dir else None,
        allow_seeded_noise=args.allow_seeded_noise,
        device=device,
    )
    stop_on_sigterm(f"site {site}")
    return client.run()


def stop_on_sigterm(who: str) -> None:
    """`docker stop` sends SIGTERM to PID 1, which Python ignores without a handler (the container
    is then killed after 10 s, exit 137): stop at once instead, saying so, exit status 0. Local
    state is written atomically after every round, so a stop loses at most the round in progress
    (the server drops the site from it; a restarted site rejoins)."""
    import signal
    import sys

    def stop(signum, _frame):
        log.warning("%s: stopping (signal %d)", who, signum)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
