"""The Federation gRPC servicer: decode -> validate -> hand to the round state -> encode.

No ML here. Tensors are decoded by ``common.wire.serde`` against the spec of what the site was sent,
so wrong names, shapes, dtypes, NaN/Inf are rejected before anything is stored.
"""

from __future__ import annotations

import logging

import grpc

from common.keybind import MAX_CERT_BYTES, MAX_SIGNATURE_BYTES
from common.logthrottle import Throttle
from common.wire.rpc import federation_pb2 as pb
from common.wire.rpc import federation_pb2_grpc as pb_grpc
from common.wire.serde import proto_to_ndarrays, scalars_from_proto, scalars_to_proto
from common.wire.tls import peer_common_name
from server.records import (
    SECAGG_STAGES,
    Confirmation,
    ConsistencyStage,
    EvalResult,
    FitResult,
    KeyAdvertisement,
    MaskedInput,
    MaskedInputStage,
    SharedKeys,
    ShareKeysStage,
    TaskKind,
    UnmaskReply,
)
from server.state import Rejected, RoundState
from server.validation import check_metrics, check_num_examples, clip_text

log = logging.getLogger(__name__)
log.addFilter(Throttle())  # it logs refusals of what any caller sends: bounded

STATUS = {
    "not_found": grpc.StatusCode.NOT_FOUND,
    "failed_precondition": grpc.StatusCode.FAILED_PRECONDITION,
    "already_exists": grpc.StatusCode.ALREADY_EXISTS,
    "invalid_argument": grpc.StatusCode.INVALID_ARGUMENT,
}
LONG_POLL_S = 1.0  # PullTask waits this long for a task before answering "wait"
KEY_BYTES = 32  # X25519 public keys
MAX_SECRET_BYTES = 4096  # one encrypted Shamir share / one revealed share: ~100 bytes in practice


def _secrets(entries, sites: list[str], what: str) -> dict[str, bytes]:
    """A map site -> bytes from a site (ShareKeys' ciphertexts, Unmask's shares): known site
    names, bounded sizes, checked before anything is stored."""
    out = dict(entries)
    if len(out) > len(sites):
        raise ValueError(f"{len(out)} {what} for a federation of {len(sites)} sites")
    for site, blob in out.items():
        if site not in sites:
            raise ValueError(f"{what} for unknown site {clip_text(site, 32)!r}")
        if len(blob) > MAX_SECRET_BYTES:
            raise ValueError(f"a {what[:-1]} of {len(blob)} bytes > {MAX_SECRET_BYTES}")
    return out


def secagg_task(rnd: int, stage) -> pb.SecAggTask:
    """Encode one secure-aggregation stage record for one site."""
    if isinstance(stage, ShareKeysStage):
        keys = {}
        for s, (enc, mask) in stage.public_keys.items():
            sig, cert = stage.bindings.get(s, (b"", b""))
            keys[s] = pb.PublicKeys(enc_pk=enc, mask_pk=mask, signature=sig, certificate=cert)
        st = pb.ShareKeysStage(
            public_keys=keys, threshold=stage.threshold, neighbours=stage.neighbours
        )
        return pb.SecAggTask(round=rnd, share_keys=st)
    if isinstance(stage, MaskedInputStage):
        st = pb.MaskedInputStage(ciphertexts=stage.ciphertexts, scale=stage.scale, clip=stage.clip)
        return pb.SecAggTask(round=rnd, masked_input=st)
    if isinstance(stage, ConsistencyStage):
        return pb.SecAggTask(round=rnd, consistency=pb.ConsistencyStage(survivors=stage.survivors))
    st = pb.UnmaskStage(
        survivors=stage.survivors, dropped=stage.dropped, confirmations=stage.confirmations
    )
    return pb.SecAggTask(round=rnd, unmask=st)


class FederationServicer(pb_grpc.FederationServicer):
    """Serves the open run: ``open_run`` installs a run's RoundState and public info (a campaign
    installs one run after another on the same port).

    With ``authenticate`` (mutual TLS) every call must come from the site its client certificate
    names: the certificate's common name must be the one the run's roster gives the claimed
    ``site_id`` (``RoundState.certs``)."""

    def __init__(
        self,
        state: RoundState | None = None,
        run_info: dict | None = None,
        authenticate: bool = False,
    ) -> None:
        self._open = (state, run_info or {})
        self.authenticate = authenticate

    def open_run(self, state: RoundState, run_info: dict) -> None:
        self._open = (state, run_info)

    def _authorize(self, context, site_id: str, state: RoundState) -> None:
        if not self.authenticate:
            return
        peer = peer_common_name(context)
        if peer is None or peer != state.certs.get(site_id):
            log.warning(
                "refused a call claiming site %r from certificate %r",
                clip_text(site_id, 32),
                clip_text(peer, 64),
            )
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"client certificate is not site {clip_text(site_id, 32)!r}'s",
            )

    def _call(self, context, site_id: str, fn):
        """Authorize the caller against the open run's roster, then run ``fn(state, info)``."""
        state, info = self._open
        if state is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "no run is open yet")
        self._authorize(context, site_id, state)
        try:
            return fn(state, info)
        except Rejected as err:
            context.abort(STATUS[err.kind], str(err))

    def _submit(self, context, kind, request, decode):
        """Hand a result to the round state, decoded lazily by ``decode(spec, state)`` against
        the open phase's spec; a ValueError from it is an INVALID_ARGUMENT and stores nothing."""
        self._call(
            context,
            request.site_id,
            lambda st, _i: st.submit(
                kind, request.site_id, request.run_id, request.round, lambda spec: decode(spec, st)
            ),
        )
        return pb.SecAggResponse()

    def RegisterSite(self, request, context):
        def register(st, info):
            try:
                theirs = scalars_from_proto(request.info).get("profile")
            except ValueError as err:  # e.g. a Scalar with no value set: the caller's mistake
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"RegisterSite info: {clip_text(str(err), 120)}",
                )
            if isinstance(theirs, str) and info.get("profile") and theirs != info["profile"]:
                log.warning(
                    "refused site %s: its profile differs (%s)",
                    clip_text(request.site_id, 32),
                    clip_text(theirs, 120),
                )
                context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"this site's profile ({clip_text(theirs, 120)}) differs from the "
                    f"server's ({info['profile']}): run the site with the federation's "
                    "profile",
                )
            st.register(request.site_id)
            return pb.RegisterSiteResponse(
                run_id=st.run_id, heartbeat_interval_s=st.heartbeat_s, info=scalars_to_proto(info)
            )

        return self._call(context, request.site_id, register)

    def Heartbeat(self, request, context):
        def beat(st, _info):
            active = st.heartbeat(request.site_id, request.run_id)
            return pb.HeartbeatResponse(run_active=active, heartbeat_interval_s=st.heartbeat_s)

        return self._call(context, request.site_id, beat)

    def PullTask(self, request, context):
        task, run_id = self._call(
            context,
            request.site_id,
            lambda st, _i: (st.next_task(request.site_id, request.run_id, LONG_POLL_S), st.run_id),
        )
        resp = pb.PullTaskResponse(run_id=run_id)
        if task.kind in (TaskKind.FIT, TaskKind.ADVERTISE_KEYS):
            resp.fit.CopyFrom(
                pb.FitTask(
                    round=task.round,
                    tensors=task.payload,
                    config=scalars_to_proto(task.config),
                    deadline_s=task.deadline_s,
                )
            )
        elif task.kind == TaskKind.EVALUATE:
            resp.evaluate.CopyFrom(
                pb.EvaluateTask(
                    round=task.round, tensors=task.payload, config=scalars_to_proto(task.config)
                )
            )
        elif task.kind in SECAGG_STAGES:
            resp.secagg.CopyFrom(secagg_task(task.round, task.payload))
        elif task.kind == TaskKind.FINISHED:
            resp.finished.CopyFrom(pb.FinishedTask(rounds_completed=task.round, reason=task.reason))
        else:
            resp.wait.CopyFrom(pb.WaitTask(retry_after_s=0.0, reason=task.reason))
        return resp

    def PushUpdate(self, request, context):
        def decode(spec, st):
            n = check_num_examples(request.num_examples, st.max_examples)
            metrics = check_metrics(TaskKind.FIT, scalars_from_proto(request.metrics))
            return FitResult(proto_to_ndarrays(request.tensors, spec), n, metrics)

        self._submit(context, TaskKind.FIT, request, decode)
        return pb.PushUpdateResponse()

    def PushEvaluation(self, request, context):
        def decode(_spec, _st):
            metrics = check_metrics(TaskKind.EVALUATE, scalars_from_proto(request.metrics))
            if request.num_examples < 0:
                raise ValueError(f"num_examples must be >= 0, got {request.num_examples}")
            return EvalResult(int(request.num_examples), metrics)

        self._submit(context, TaskKind.EVALUATE, request, decode)
        return pb.PushEvaluationResponse()

    def Decline(self, request, context):
        self._call(
            context,
            request.site_id,
            lambda st, _i: st.decline(
                request.site_id, request.run_id, request.round, request.reason
            ),
        )
        return pb.DeclineResponse()

    # -- secure aggregation stages ------------------------------------------------------------

    def AdvertiseKeys(self, request, context):
        def decode(_spec, st):
            keys = (request.keys.enc_pk, request.keys.mask_pk)
            if any(len(k) != KEY_BYTES for k in keys):
                raise ValueError(f"public keys must be {KEY_BYTES} bytes each")
            sig, cert = request.keys.signature, request.keys.certificate  # relayed, not checked
            if len(sig) > MAX_SIGNATURE_BYTES:
                raise ValueError(f"a key signature of {len(sig)} bytes > {MAX_SIGNATURE_BYTES}")
            if len(cert) > MAX_CERT_BYTES:
                raise ValueError(f"a certificate of {len(cert)} bytes > {MAX_CERT_BYTES}")
            n = check_num_examples(request.num_examples, st.max_examples)
            metrics = check_metrics(TaskKind.ADVERTISE_KEYS, scalars_from_proto(request.metrics))
            return KeyAdvertisement(*keys, n, metrics, signature=sig, certificate=cert)

        return self._submit(context, TaskKind.ADVERTISE_KEYS, request, decode)

    def ShareKeys(self, request, context):
        return self._submit(
            context,
            TaskKind.SHARE_KEYS,
            request,
            lambda _s, st: SharedKeys(_secrets(request.ciphertexts, st.sites, "ciphertexts")),
        )

    def PushMaskedInput(self, request, context):
        def decode(spec, _st):
            metrics = check_metrics(TaskKind.MASKED_INPUT, scalars_from_proto(request.metrics))
            return MaskedInput(proto_to_ndarrays([request.masked], spec)["masked"], metrics)

        return self._submit(context, TaskKind.MASKED_INPUT, request, decode)

    def Confirm(self, request, context):
        return self._submit(
            context,
            TaskKind.CONSISTENCY,
            request,
            lambda _s, st: Confirmation(_secrets(request.tags, st.sites, "tags")),
        )

    def Unmask(self, request, context):
        return self._submit(
            context,
            TaskKind.UNMASK,
            request,
            lambda _s, st: UnmaskReply(_secrets(request.shares, st.sites, "shares")),
        )
