"""Secure aggregation at a site: the answer to each stage the server opens.

A site keeps its update (``PendingUpdate``) and this round's ``SecAggClient`` between advertising
its keys and unmasking; ``stage_answer`` turns one stage task into the request that answers it.
The cryptography lives in ``common.secagg``; this module only builds the site's messages (the
mirror of ``server/secure.py``). Used by the real site (``client/app.py``) and by the
lightweight sites of the scale benchmark (``bench/perf/perf_scale.py``).

Under mutual TLS a site signs its advertised keys with its certificate's key (``signer``, a
``common.keybind.KeySigner``) and its ``SecAggClient`` verifies every peer's signature and
certificate before sharing (``verify``); the bindings travel in ``PublicKeys``. Without TLS
there is no signer: the fields stay empty and nothing is checked.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from common.keybind import KeySigner
from common.secagg import SecAggClient, mask_context, quantize
from common.wire.rpc import federation_pb2 as pb
from common.wire.serde import ndarrays_to_proto, scalars_to_proto


@dataclass(frozen=True)
class PendingUpdate:
    """The update a site keeps between advertising its keys and masking it."""

    round: int
    weighted: np.ndarray  # n_k * params_k, flattened in sorted key order (or, ring: the vector)
    num_examples: int
    ring: bool = False  # distributed DP: already an integer vector mod 2**32, noise share included
    digest: bytes = b""  # common.secagg.round_digest of the task it was trained on


def advertise_request(
    site: str,
    run_id: str,
    secagg: SecAggClient,
    pending: PendingUpdate,
    metrics: dict,
    signer: KeySigner | None = None,
) -> pb.AdvertiseKeysRequest:
    """Stage 0: fresh public keys and n_k (not secret); the update stays at the site. With
    ``signer`` (mutual TLS) the keys go with the site's signature over them and its certificate,
    for the round and run its ``SecAggClient`` is for (what its peers verify)."""
    enc_pk, mask_pk = secagg.advertise_keys()
    keys = pb.PublicKeys(enc_pk=enc_pk, mask_pk=mask_pk)
    if signer is not None:
        keys.signature, keys.certificate = signer.sign(
            secagg.run_id, secagg.rnd, secagg.site, enc_pk, mask_pk
        )
    return pb.AdvertiseKeysRequest(
        site_id=site,
        run_id=run_id,
        round=pending.round,
        keys=keys,
        num_examples=pending.num_examples,
        metrics=scalars_to_proto(metrics),
    )


def stage_answer(
    site: str, run_id: str, secagg: SecAggClient, pending: PendingUpdate, task: pb.SecAggTask
) -> tuple[str, object]:
    """(Federation RPC name, request) answering the stage ``task`` opens. Raises
    ``common.secagg.SecAggError`` for a stage this site must refuse (e.g. both shares of one
    peer asked for, a survivor set without this site)."""
    rnd, stage = task.round, task.WhichOneof("stage")
    base = {"site_id": site, "run_id": run_id, "round": rnd}
    if stage == "share_keys":
        st = task.share_keys
        keys = {s: (k.enc_pk, k.mask_pk) for s, k in st.public_keys.items()}
        bindings = {
            s: (k.signature, k.certificate)
            for s, k in st.public_keys.items()
            if k.signature or k.certificate
        }
        cts = secagg.share_keys(keys, int(st.threshold), list(st.neighbours), bindings)
        return "ShareKeys", pb.ShareKeysRequest(**base, ciphertexts=cts)
    if stage == "masked_input":
        st = task.masked_input
        t0 = time.perf_counter()
        if pending.ring:  # distributed DP: integers already; no data-dependent count leaves
            q, clipped = pending.weighted, 0
        else:
            q, clipped = quantize(pending.weighted, pending.num_examples, st.clip, st.scale)
        context = mask_context(pending.digest, st.scale, st.clip)
        masked = secagg.masked_input(dict(st.ciphertexts), q, context)
        metrics = {
            "mask_s": time.perf_counter() - t0,
            "clipped": clipped,
            "bytes_up": float(masked.nbytes),
        }
        tensor = ndarrays_to_proto({"masked": masked})[0]
        request = pb.PushMaskedInputRequest(
            **base, masked=tensor, metrics=scalars_to_proto(metrics)
        )
        return "PushMaskedInput", request
    if stage == "consistency":
        tags = secagg.confirm(list(task.consistency.survivors))
        return "Confirm", pb.ConfirmRequest(**base, tags=tags)
    st = task.unmask
    shares = secagg.unmask(list(st.survivors), list(st.dropped), dict(st.confirmations))
    return "Unmask", pb.UnmaskRequest(**base, shares=shares)
