"""One federated run at the server: wait for the sites, run the rounds, evaluate, checkpoint.

The round is ``Server.run_round``: configure -> the sites train -> (secure) sum -> strategy ->
evaluate; everything else is set-up and bookkeeping. ``server/campaign.py`` serves one run after
another on one port and is the ``fedonco server`` command. A run directory
holds ``state.json`` (run id, last completed round, history), ``checkpoints/round_NNNN.npz`` (the
global model after that round), ``history.json`` and, at the end, ``final_model.npz`` and
``result.json``. ``--resume RUN_DIR`` continues after the last completed round with the same run id.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from pathlib import Path

import torch

from common.config import Config
from common.data.loader import load_arrays
from common.data.store import check_roster, read_manifest
from common.device import device_record
from common.evaluation import evaluate_sums, summarize
from common.fl.strategy import strategy_for, sum_weighted_updates
from common.io import load_npz, save_npz, secure_dir, write_json_atomic
from common.layout import RunLayout
from common.methods import get_method
from common.metrics import SUM_KEYS
from common.model import (
    buffer_keys,
    count_parameters,
    get_params,
    norm_keys,
    set_params,
    state_sha256,
)
from common.progress import progress
from common.records import (
    ServerState,
    SkippedRound,
    read_state,
    round_record,
    run_result,
    write_record,
)
from common.release import export_release, release_info
from common.secagg import round_digest
from common.training.ddp import wrap_free
from common.training.dp.accountant import epsilons_of, history_from_text
from common.training.dp.adjacency import ADJACENCIES
from common.training.dp.settings import DPConfigError
from common.training.dp.skellam import epsilon_of
from common.training.pretrain import initial_model
from common.transforms import to_inputs
from common.wire.serde import (
    ndarrays_to_proto,
    proto_to_ndarrays,
    scalars_from_proto,
    scalars_to_proto,
    spec_of,
    tensors_nbytes,
)
from server.ledger import PrivacyLedger
from server.records import TaskKind
from server.secure import secure_aggregate
from server.state import RoundState

log = logging.getLogger(__name__)
DP_KEYS = (
    "epsilon",
    "delta",
    "accountant",
    "adjacency",
    "randomness",
    "noise_multiplier",
    "max_grad_norm",
    "sample_rate",
    "steps",
)


SKELLAM_ACCOUNTANT = "skellam-rdp"
DDP_THREAT_MODEL = (
    "central: holds against the server, the released model and anyone outside the federation, "
    "if sites do not collude with the server, secure aggregation holds and the sites' noise is "
    "site-secret (dp.randomness; a seeded simulation protects nothing against the server); "
    "against a single site, another site's contribution is protected only by its own noise "
    "share (mu/t)"
)


class Server:
    def __init__(
        self,
        cfg: Config,
        method: str,
        data_dir: Path,
        run_dir: Path,
        resume: bool,
        device: torch.device | None = None,
    ):
        """``device``: where the server's model evaluates (and pretrains; default CPU)."""
        cfg = cfg.for_method(method)  # the method's own [recipes.<method>], if any
        self.cfg, self.method, self.run_dir = cfg, method, run_dir
        self.device = torch.device(device or "cpu")
        self.traits = get_method(method)
        if self.traits.kind != "federated":
            raise ValueError(
                f"{method} is a reference row that `fedonco bench` trains in one "
                "process, not a federation a server runs"
            )
        manifest = read_manifest(data_dir)
        check_roster(manifest, cfg.site_names, f"--data {data_dir}")
        self.strategy = strategy_for(cfg, method)
        torch.manual_seed(cfg.seed)
        self.model = initial_model(cfg, method, self.device)  # public pretraining, if any
        initial = get_params(self.model)
        self.shared = self.strategy.shared_keys(list(initial), norm_keys(self.model))
        buffers = buffer_keys(self.model) & set(self.shared)
        self.strategy.setup(initial, self.shared, buffers, cfg)
        self.ddp = self.strategy.ring_plan()  # distributed DP's plan: the sites send noisy sums
        self.ledger = PrivacyLedger(run_dir)  # every unmasked distributed-DP sum, crash or not
        self.layout = layout = RunLayout(run_dir)
        secure_dir(layout.checkpoints)
        state_file = layout.state
        if resume:
            if not state_file.is_file():
                raise FileNotFoundError(f"--resume: {state_file} not found")
            st = read_state(state_file)
            if st.method != method:
                raise ValueError(f"--resume: {run_dir} is a {st.method} run, not {method}")
            self.run_id, self.done = st.run_id, st.round
            self.history, self.skipped = list(st.history), list(st.skipped)
            self.initial_sha = st.initial_model_sha256
            self.params = load_npz(layout.checkpoint(self.done)) if self.done else initial
            opt = layout.strategy_checkpoint(self.done)
            if self.done and opt.is_file():  # the strategy's own state (an optimizer's moments)
                self.strategy.load_state_dict(load_npz(opt))
            log.info("resuming run %s after round %d", self.run_id, self.done)
        else:
            if state_file.exists():
                raise FileExistsError(
                    f"{run_dir} already holds a run; use --resume or a new directory"
                )
            self.run_id = f"{method}-{uuid.uuid4().hex[:12]}"
            self.done, self.history, self.params, self.skipped = 0, [], initial, []
            self.initial_sha = state_sha256(initial)
            self._save_state()
        images, self.test_masks, _, self.test_sites = load_arrays(data_dir, "test", None, manifest)
        self.test_inputs = to_inputs(images, manifest["window"])
        self.state = RoundState(
            self.run_id,
            cfg.site_names,
            cfg.fl.heartbeat_s,
            cfg.fl.max_examples_per_site,
            certs=cfg.site_certs,
        )
        self.t_start = time.perf_counter()
        self.transport = "plaintext"  # serve_campaign sets what the port speaks

    # -- one round ------------------------------------------------------------------------------

    def run_round(self, rnd: int) -> dict | None:
        """One round: configure -> sites train -> (secure) sum -> strategy -> evaluate; None when
        too few sites are alive to start it (the caller skips it)."""
        t0, cpu0 = time.perf_counter(), time.process_time()
        try:
            orders = self.strategy.configure_fit(rnd, self.state.alive_sites())
        except ValueError as err:  # a site went silent since the loop looked: a thin round
            log.warning("round %d: %s", rnd, err)
            return None
        configs = {site: o.to_scalars() for site, o in orders.items()}  # what the wire carries
        shared = {k: self.params[k] for k in self.shared}
        payload = ndarrays_to_proto({**shared, **self.strategy.payload_down(rnd)})
        upload = self.strategy.upload_template(shared)  # the weights and the strategy's extras
        t_enc = time.perf_counter() - t0
        record = {"round": rnd, "selected": sorted(configs)}
        try:
            summed, total, metrics = self.gather(rnd, configs, payload, upload, record)
        except (ValueError, KeyError, TypeError, ArithmeticError) as err:  # never out of the loop
            log.exception("round %d: the sites' results could not be combined", rnd)
            record["aborted"] = f"results could not be combined: {type(err).__name__}: {err}"
            summed, total, metrics = None, 0.0, {}
        t_fit = time.perf_counter() - t0
        if summed is None or len(metrics) < self.cfg.fl.min_fit_sites:
            record["aborted"] = record.get("aborted") or (
                f"{len(metrics)} update(s) < min_fit_sites={self.cfg.fl.min_fit_sites}"
            )
            log.warning("round %d: %s; model unchanged", rnd, record["aborted"])
        else:
            t1 = time.perf_counter()
            self.params = self.strategy.aggregate_fit(
                rnd, summed, total, metrics, current=self.params
            )
            record["fit"] = {"sites": metrics, "total_weight": total}
            record["timing_s"] = {"aggregate": time.perf_counter() - t1}
        round_wall = time.perf_counter() - t0
        t2 = time.perf_counter()
        try:
            record["eval"] = self.evaluate(rnd)
        except (ValueError, ArithmeticError) as err:  # e.g. a model whose outputs are not finite
            log.error("round %d: the global model could not be evaluated: %s", rnd, err)
            record["eval"] = {
                "where": self.traits.evaluated_at,
                "overall": {},
                "per_site": {},
                "dice_site_mean": float("nan"),
                "error": f"{type(err).__name__}: {err}",
            }
        timing = record.setdefault("timing_s", {})
        slowest = max((_number(m.get("train_time_s")) for m in metrics.values()), default=0.0)
        timing.update(
            encode=t_enc,
            fit_phase=t_fit,
            round=round_wall,
            evaluate=time.perf_counter() - t2,
            slowest_train=slowest,
            fl_overhead=(round_wall - slowest) / round_wall if round_wall else 0.0,
            secagg_server=record.get("secagg", {}).get("secagg_server_s", 0.0),
            server_cpu=time.process_time() - cpu0,  # this process, all its threads
        )
        record["bytes_down_per_site"] = tensors_nbytes(payload)
        return record

    def gather(self, rnd, configs, payload, upload, record):
        """The sites train; returns (sum of n_k * upload_k, sum of n_k, site metrics). A
        distributed-DP sum is entered in the ledger before anything derived from it leaves."""
        out = fit_phase(self.cfg, self.state, rnd, configs, payload, upload, record, self.ddp)
        if "ddp" in record:
            self.ledger.append({"round": rnd, **record["ddp"]})
        return out

    def evaluate(self, rnd: int) -> dict:
        """Per-site and pooled metrics: centrally, or at the sites when norm layers stay local."""
        if self.traits.evaluated_at == "sites":
            shared = {k: self.params[k] for k in self.shared}
            sites = self.state.alive_sites()
            results, failures = self.state.run_phase(
                TaskKind.EVALUATE,
                rnd,
                {s: {"round": rnd} for s in sites},
                ndarrays_to_proto(shared),
                None,
                self.cfg.fl.round_timeout_s,
            )
            sums = {
                s: {k: float(v) for k, v in r.metrics.items() if k in SUM_KEYS}
                for s, r in results.items()
            }
            out = summarize(sums)
            out["where"], out["failures"] = "sites", failures
            return out
        set_params(self.model, self.params)
        sums = {}
        for site in self.cfg.site_names:
            sel = self.test_sites == site
            sums[site] = evaluate_sums(
                self.model,
                self.test_inputs[torch.from_numpy(sel)],
                self.test_masks[sel],
                self.cfg.train.eval_batch_size,
            )
        out = summarize(sums)
        out["where"] = "server"
        return out

    # -- bookkeeping ----------------------------------------------------------------------------

    def _save_state(self) -> None:
        """state.json: the history is a list of records checked once, when each was kept (not
        re-validated every round: that made a long run's bookkeeping quadratic)."""
        state = ServerState(
            run_id=self.run_id,
            method=self.method,
            round=self.done,
            history=self.history,
            initial_model_sha256=self.initial_sha,
            skipped=self.skipped,
        )
        write_record(self.layout.state, state)

    def checkpoint(self, rnd: int) -> None:
        ckpt = self.layout.checkpoints
        save_npz(self.layout.checkpoint(rnd), self.params)
        state = self.strategy.state_dict()
        if state:  # the strategy's own state (ddp-sgd's and FedAdam's server optimizer)
            save_npz(self.layout.strategy_checkpoint(rnd), state)
        self.done = rnd
        self._save_state()
        for old in [*ckpt.glob("round_*.npz"), *ckpt.glob("strategy_round_*.npz")]:
            if old.name not in (
                self.layout.checkpoint(rnd).name,
                self.layout.strategy_checkpoint(rnd).name,
            ):
                old.unlink()

    def run_info(self, runs_left: int = 0, linger: bool = False) -> dict:
        """Public facts a site learns when it registers (``runs_left``: runs after this one;
        ``linger``: after the last run, stay until the server goes away)."""
        return {
            "method": self.method,
            "rounds": self.cfg.train.rounds,
            "model_base": self.cfg.model.base,
            "runs_left": runs_left,
            "linger": int(linger),
            "profile": self.cfg.shape_fingerprint(),
        }

    def serve_rounds(self, stop: threading.Event) -> dict:
        """Wait for the sites, run the remaining rounds, finalize, tell the sites it is over."""
        self.t_start = time.perf_counter()
        self.state.wait_for_sites(self.cfg.fl.min_fit_sites, self.cfg.fl.wait_for_sites_s, stop)
        if stop.is_set():  # SIGTERM while waiting for the sites
            raise KeyboardInterrupt
        bar = progress(self.cfg.train.rounds, f"{self.method} rounds", "round", initial=self.done)
        status, skips = "completed", 0
        while self.done < self.cfg.train.rounds:
            rnd = self.done + 1
            alive = self.state.alive_sites()
            record = self.run_round(rnd) if len(alive) >= self.cfg.fl.min_fit_sites else None
            if record is None:
                skips += 1
                self.skipped.append(
                    SkippedRound(
                        round=rnd,
                        attempt=skips,
                        alive=alive,
                        reason=f"{len(alive)} live site(s) < min_fit_sites="
                        f"{self.cfg.fl.min_fit_sites}",
                    )
                )
                log.warning(
                    "round %d skipped (%d of %d in a row): %s",
                    rnd,
                    skips,
                    self.cfg.fl.max_skipped_rounds,
                    self.skipped[-1].reason,
                )
                self._save_state()
                if skips >= self.cfg.fl.max_skipped_rounds:
                    status = f"stopped: {skips} rounds in a row without min_fit_sites live sites"
                    break
                if stop.wait(self.cfg.fl.skip_wait_s):
                    raise KeyboardInterrupt
                continue
            skips = 0
            self.history.append(round_record(record))  # the schema, before it is kept
            self.checkpoint(rnd)
            ev = record["eval"]["overall"]
            bar.update(1)
            bar.set_postfix(
                dice=f"{ev.get('dice', float('nan')):.3f}",
                sites=f"{len(record.get('fit', {}).get('sites', {}))}/{len(record['selected'])}",
            )
            if stop.is_set():
                raise KeyboardInterrupt
        bar.close()
        result = self.finalize(status)
        self.state.finish(self.done, status, wait_s=2 * self.cfg.fl.heartbeat_s + 1.0)
        return result

    def devices(self) -> dict:
        """Where this run computed: the server's device (its evaluation) and each site's, as the
        site last reported it (``device``, and ``gpu`` on CUDA)."""
        sites = {}
        for rec in self.history:
            for site, m in (rec.fit.sites if rec.fit else {}).items():
                if "device" in m:
                    sites[site] = {k: m[k] for k in ("device", "gpu") if k in m}
        return {"server": device_record(self.device), "sites": dict(sorted(sites.items()))}

    def privacy(self) -> dict:
        """Final (epsilon, delta) per site from the sites' reports; the run's is the worst site.
        Distributed DP: one central accountant over the steps the history records."""
        if not self.traits.dp:
            return {"epsilon": None, "delta": None, "accountant": None, "dp": None}
        if self.ddp is not None:
            releases = self.ledger.entries  # every unmasked sum, also those a crash lost
            adjacency = self.ddp.adjacency
            eps = {adj: epsilon_of(releases, self.ddp.delta, adj) for adj in ADJACENCIES}
            kept = sum(h.ddp is not None for h in self.history)
            randomness = _consensus(h.fit.sites if h.fit else {} for h in self.history)
            return {
                "epsilon": eps[adjacency],
                "delta": self.ddp.delta,
                "accountant": SKELLAM_ACCOUNTANT,
                "dp": {
                    **self.ddp.as_dict(),
                    "steps_accounted": len(releases),
                    "releases_not_in_history": len(releases) - kept,
                    "epsilon_by_adjacency": eps,
                    "randomness": randomness,
                    "threat_model": DDP_THREAT_MODEL,
                },
            }
        per_site = {}
        for rec in self.history:  # the latest report of each site
            for site, m in (rec.fit.sites if rec.fit else {}).items():
                per_site[site] = _site_privacy(site, m)
        if not per_site:
            return {
                "epsilon": None,
                "delta": self.cfg.dp.delta,
                "accountant": self.cfg.dp.accountant,
                "dp": None,
            }
        worst = max(per_site, key=lambda s: per_site[s]["epsilon"])
        return {
            "epsilon": per_site[worst]["epsilon"],
            "delta": per_site[worst]["delta"],
            "accountant": per_site[worst]["accountant"],
            "dp": {
                **per_site[worst],
                "worst_site": worst,
                "per_site": per_site,
                "randomness": _consensus([per_site]),
            },
        }

    def finalize(self, status: str = "completed") -> dict:
        save_npz(self.layout.final_model, self.params)
        if self.traits.release == "global":  # else (FedBN) each site releases its own model
            export_release(
                self.layout.release, self.params, release_info(self.cfg, self.method, self.params)
            )
        write_json_atomic(self.layout.history, [r.to_json() for r in self.history])
        last = self.history[-1].eval.to_json() if self.history else {}
        result = {
            "method": self.method,
            "run_id": self.run_id,
            "rounds": self.done,
            "status": status,
            "transport": self.transport,
            "skipped_rounds": [r.to_json() for r in self.skipped],
            "n_params": count_parameters(self.model),
            "initial_model_sha256": self.initial_sha,
            "final_model_sha256": state_sha256(self.params),
            "dice": last.get("overall", {}).get("dice"),
            "dice_global": last.get("overall", {}).get("dice_global"),
            "ce_loss": last.get("overall", {}).get("ce_loss"),
            "fp_rate_empty": last.get("overall", {}).get("fp_rate_empty"),
            "dice_site_mean": last.get("dice_site_mean"),
            "dice_per_site": {s: m["dice"] for s, m in last.get("per_site", {}).items()},
            "evaluated_at": last.get("where"),
            "device": self.devices(),
            "wall_s": time.perf_counter() - self.t_start,  # from the wait for the sites on
            **self.privacy(),
        }
        write_record(self.layout.result, run_result(result))
        return result


def sent_digest(payload, configs: dict) -> bytes:
    """``common.secagg.round_digest`` of the round as the sites decode it: the sites' masks
    are bound to it, and the server needs it to remove the masks of sites that dropped. Every
    site of a round is sent the same tensors and, but for its seed, the same orders."""
    tensors = proto_to_ndarrays(payload)
    digests = {
        round_digest(tensors, scalars_from_proto(scalars_to_proto(c))) for c in configs.values()
    }
    if len(digests) != 1:
        raise RuntimeError("the sites of one round were given different orders (a server bug)")
    return digests.pop()


def fit_phase(
    cfg: Config,
    state: RoundState,
    rnd: int,
    configs: dict,
    payload,
    upload: dict,
    record: dict,
    plan=None,
):
    """The fit phase of round ``rnd``: the sites in ``configs`` train on ``payload``; returns
    (sum of n_k * upload_k, sum of n_k, site metrics) and notes failures, dropouts and the
    secure-aggregation record in ``record``. ``upload``: what each site sends (its shared
    weights and the strategy's extras; names, dtypes, shapes). ``plan``: distributed DP's
    (``DDPPlan``).

    With secure aggregation the server only ever holds masked vectors and their sum; without
    it, the plain updates are summed. Either way the strategy sees only the sum.
    """
    timeout = cfg.fl.round_timeout_s
    if not cfg.secagg.enabled:
        updates, record["failures"] = state.run_phase(
            TaskKind.FIT, rnd, configs, payload, spec_of(upload), timeout
        )
        if not updates:
            return None, 0.0, {}
        summed, total = sum_weighted_updates(
            {s: (u.weighted, u.num_examples) for s, u in updates.items()}
        )
        return summed, total, {s: u.metrics for s, u in updates.items()}
    advertised, record["failures"] = state.run_phase(
        TaskKind.ADVERTISE_KEYS, rnd, configs, payload, None, timeout
    )
    if plan is not None:
        n_total = float(sum(a.num_examples for a in advertised.values()))
        if not wrap_free(plan.scale, plan.clip, n_total, len(advertised) * plan.mu_share):
            record["aborted"] = (
                f"ddp-sgd: {n_total:.0f} examples could wrap the int32 sum "
                "at this scale; no step taken"
            )
            return None, 0.0, {}
    out = secure_aggregate(
        cfg,
        state,
        rnd,
        advertised,
        upload,
        ring_scale=plan.scale if plan else None,
        digest=sent_digest(payload, configs),
    )
    record["secagg"] = out.record
    record["failures"].update(
        {
            s: f"dropped during secure aggregation ({k}): "
            + out.record["dropout_reasons"].get(s, "no reason recorded")
            for k, sites in out.record["dropouts"].items()
            for s in sites
        }
    )
    if out.record.get("aborted"):
        record["aborted"] = out.record["aborted"]
    if plan is not None and out.weighted_sum is not None:  # the mechanism this step realised
        k = len(out.record["survivors"])
        record["ddp"] = {
            "q": plan.q,
            "mu": k * plan.mu_share,
            "mu_target": plan.mu,
            "sites": k,
            "delta1": plan.delta1,
            "delta2": plan.delta2,
        }
    return out.weighted_sum, out.total_weight, out.metrics


def _site_privacy(site: str, m: dict) -> dict:
    """A DP site's privacy report as results.json records it: ``steps`` is the TOTAL over the run
    (``steps_round`` the last round's) and ``history`` the site's whole mechanism history
    [[σ, q, steps], ...], so ε can be recomputed from the results alone."""
    out = {k: m.get(k) for k in DP_KEYS}
    out["steps_round"], out["steps"] = m.get("steps"), m.get("steps_total")
    try:
        out["history"] = [list(e) for e in history_from_text(m.get("accountant_history"))]
        out["epsilon_by_adjacency"] = epsilons_of(out["history"], float(m.get("delta")))
    except (DPConfigError, TypeError) as err:
        log.warning("site %s: unusable mechanism history (%s)", site, err)
        out["history"] = out["epsilon_by_adjacency"] = None
    return out


def _consensus(site_maps) -> str | None:
    """The randomness the sites reported (``dp.randomness``): one mode, or 'mixed: ...'."""
    modes = sorted({str(m.get("randomness")) for sites in site_maps for m in sites.values()})
    return None if not modes else modes[0] if len(modes) == 1 else "mixed: " + ", ".join(modes)


def _number(value) -> float:
    """A site-reported timing as a float (0.0 when it is missing or not a number)."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0
