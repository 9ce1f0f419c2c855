"""Secure aggregation at the server: runs the Bonawitz stages as phases of the round state.

The sites' updates arrive only as masked uint32 vectors; what comes out is the sum over the
surviving sites (dequantised) and their total weight — exactly the pair a strategy consumes.
The cryptography lives in ``common.secagg``; this module only moves its messages around.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from common.config import Config
from common.secagg import (
    SecAggAbort,
    SecAggError,
    SecAggServer,
    dequantize,
    mask_context,
    quantization_error_bound,
    quantization_scale,
    unflatten,
)
from server.records import (
    ConsistencyStage,
    KeyAdvertisement,
    MaskedInputStage,
    ShareKeysStage,
    TaskKind,
    UnmaskStage,
)
from server.state import RoundState

log = logging.getLogger(__name__)


@dataclass
class SecAggOutcome:
    weighted_sum: dict[str, np.ndarray] | None  # None when the round was aborted
    total_weight: float
    metrics: dict[str, dict]  # survivor -> its (non-secret) training metrics
    record: dict = field(default_factory=dict)  # dropouts per stage, timings, bound


def secure_aggregate(
    cfg: Config,
    state: RoundState,
    rnd: int,
    advertised: dict[str, KeyAdvertisement],
    shared: dict[str, np.ndarray],
    ring_scale: float | None = None,
    digest: bytes = b"",
) -> SecAggOutcome:
    """Run share keys -> masked input -> consistency -> unmask for the sites that advertised keys.

    ``ring_scale``: the sites send integer vectors they made themselves (distributed DP: their
    noise shares are integers), scaled by this s; the sum is divided by it. Otherwise each site
    quantises its weighted update at the scale chosen here. ``digest``: the round the sites were
    sent (``server.app.sent_digest``); their pairwise masks are bound to it."""
    keys = sorted(shared)
    length = int(sum(shared[k].size for k in keys))
    timeout = cfg.fl.round_timeout_s
    steps: dict[str, float] = {}  # the server's own secure-aggregation work, per step (s)
    # dropouts: per stage, the sites that left; dropout_reasons: why (declined, or which deadline)
    record: dict = {
        "dropouts": {},
        "dropout_reasons": {},
        "threshold": cfg.secagg.threshold,
        "server_steps_s": steps,
    }

    def timed(fn, *args):
        t = time.perf_counter()
        try:
            return fn(*args)
        finally:
            steps[fn.__name__] = steps.get(fn.__name__, 0.0) + time.perf_counter() - t

    def phase(kind, sites, payloads, spec=None):
        results, failures = state.run_phase(
            kind, rnd, {s: {} for s in sites}, None, spec, timeout, payloads
        )
        record["dropouts"][kind.value] = sorted(failures)
        record["dropout_reasons"].update(failures)
        return results

    weights = {s: a.num_examples for s, a in advertised.items()}
    try:
        srv = SecAggServer(
            state.run_id,
            rnd,
            sorted(advertised),
            cfg.secagg.threshold,
            length,
            neighbours=cfg.secagg.neighbours,
        )
        u1 = timed(srv.receive_keys, {s: (a.enc_pk, a.mask_pk) for s, a in advertised.items()})
        public = {j: u1[j] for j in sorted(u1)}
        # each site's signature over its keys and its certificate (mutual TLS), relayed as they
        # came: the sites check them (common.keybind), the server cannot make one for a site
        bindings = {
            j: (advertised[j].signature, advertised[j].certificate)
            for j in public
            if advertised[j].signature or advertised[j].certificate
        }
        shares = phase(
            TaskKind.SHARE_KEYS,
            sorted(u1),
            {
                s: ShareKeysStage(
                    public,
                    cfg.secagg.threshold,
                    [j for j in srv.neighbours_of(s) if j in u1],
                    bindings,
                )
                for s in u1
            },
        )
        routed = timed(srv.route_shares, {s: r.ciphertexts for s, r in shares.items()})
        # m = the sites that may send (not the weight): any legal total quantises (issue 15)
        scale = ring_scale or quantization_scale(
            cfg.secagg.clip, float(sum(weights[s] for s in routed)), max_sites=len(routed)
        )
        masked = phase(
            TaskKind.MASKED_INPUT,
            sorted(routed),
            {s: MaskedInputStage(routed[s], scale, cfg.secagg.clip) for s in routed},
            spec={"masked": ("uint32", (length,))},
        )
        survivors, dropped = timed(srv.receive_masked, {s: m.masked for s, m in masked.items()})
        confirmed = phase(
            TaskKind.CONSISTENCY, survivors, {s: ConsistencyStage(survivors) for s in survivors}
        )
        tags = timed(srv.route_confirmations, {s: c.tags for s, c in confirmed.items()})
        revealed = phase(
            TaskKind.UNMASK,
            sorted(tags),
            {s: UnmaskStage(survivors, dropped, tags[s]) for s in tags},
        )
        context = mask_context(digest, scale, cfg.secagg.clip)  # what each site masked under
        total_u32 = timed(srv.unmask, {s: r.shares for s, r in revealed.items()}, context)
    except (SecAggAbort, SecAggError) as err:
        record.update(aborted=str(err), secagg_server_s=sum(steps.values()))
        log.warning("round %d: secure aggregation aborted: %s", rnd, err)
        return SecAggOutcome(None, 0.0, {}, record)
    vec = timed(dequantize, total_u32, scale)
    metrics = {s: {**advertised[s].metrics, **masked[s].metrics} for s in survivors}
    record.update(
        survivors=survivors,
        dropped=dropped,
        scale=scale,
        # distributed DP: the sites' rounding is part of the mechanism, the server adds none
        error_bound_sum=0.0 if ring_scale else quantization_error_bound(len(survivors), scale),
        secagg_server_s=sum(steps.values()),
        clipped=int(sum(m.get("clipped", 0) for m in metrics.values())),
    )
    return SecAggOutcome(
        unflatten(vec, shared, keys), float(sum(weights[s] for s in survivors)), metrics, record
    )
