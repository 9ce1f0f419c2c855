"""Fuzz the Federation service as a hostile caller would, against a real server in this process.

``FuzzTarget`` starts a real server (FedAvg, one round, plaintext updates, site A registered and
handed its fit task, so the round's fit phase is open) on 127.0.0.1 and sends it whatever it is
given; ``requests()`` is a Hypothesis strategy over every Federation request message — random
and known site ids, run ids, rounds, tensors (names, dtypes, shapes, bytes), weights, metrics of
every scalar type, keys, ciphertexts and shares. The one message left out is site A's own
Decline of its open round: that is a legal action, not an attack. At the end site A sends its
honest update: the round must complete and the global model must be exactly A's update, so
nothing the fuzzer sent touched it.

``SecAggFuzzTarget`` does the same under secure aggregation: three honest sites (A, B, C; fixed
updates, real ``SecAggClient`` cryptography) walk the round through its four stages — advertise
keys, share keys, masked input, unmask — and at each stage, after A and B have answered and
while C still owes its answer, the fuzzer sends its messages; then C answers and the round moves
on. Left out as legal actions: C's own answer to the open stage and any Decline by A, B or C of
the open round. The global model must equal the weighted mean of the three honest updates
(within the quantisation bound).

``ReleaseFuzzTarget`` does it to the release service (``Predict``/``Describe``): model names
(traversals, absolute paths, long ones), batches of every dtype, shape and length, against a
default model and a models root; a legal Predict must still be answered at the end.

Among the messages are raw bytes that are no request at all (gRPC answers INTERNAL for them). Every
target counts the statuses and, with ``LogTally``, what the service logged: the check is that no
call got UNKNOWN (an exception escaping a handler) and no log line carries a traceback.

``make fuzz`` (``python -m bench.fuzz --messages 20000``: a quarter at the secure-aggregation
stages, then as many again at the release service) prints the statuses, the server's RSS before
and after, and the checks; tests/integration/test_fuzz.py runs a bounded version in
``make test-heavy``.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from common.keybind import MAX_CERT_BYTES, MAX_SIGNATURE_BYTES
from common.secagg import CT_LEN, SHARE_LEN, mask_context, round_digest
from common.wire.channel import create_channel, create_server
from common.wire.rpc import federation_pb2 as pb
from common.wire.rpc import federation_pb2_grpc as pb_grpc
from common.wire.rpc import inference_pb2 as ipb
from common.wire.rpc import inference_pb2_grpc as ipb_grpc
from common.wire.rpc import types_pb2 as tpb
from common.wire.serde import ndarrays_to_proto, proto_to_ndarrays, scalars_from_proto

RPCS = {  # request type -> RPC name
    pb.RegisterSiteRequest: "RegisterSite",
    pb.PullTaskRequest: "PullTask",
    pb.PushUpdateRequest: "PushUpdate",
    pb.PushEvaluationRequest: "PushEvaluation",
    pb.HeartbeatRequest: "Heartbeat",
    pb.DeclineRequest: "Decline",
    pb.AdvertiseKeysRequest: "AdvertiseKeys",
    pb.ShareKeysRequest: "ShareKeys",
    pb.PushMaskedInputRequest: "PushMaskedInput",
    pb.ConfirmRequest: "Confirm",
    pb.UnmaskRequest: "Unmask",
}


@dataclass(frozen=True)
class Raw:
    """Bytes that are no request message at all, sent to one RPC of the target's service."""

    rpc: str
    data: bytes


class LogTally(logging.Handler):
    """What the process logged (at the root logger's level, WARNING by default) while attached:
    lines, and the lines that carry a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines = self.tracebacks = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.lines += 1
        self.tracebacks += bool(record.exc_info) or "Traceback" in record.getMessage()

    def __enter__(self) -> LogTally:
        logging.getLogger().addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger().removeHandler(self)


def _raw(rpcs) -> object:
    from hypothesis import strategies as st

    return st.builds(Raw, rpc=st.sampled_from(sorted(rpcs)), data=st.binary(max_size=200))


def rss_mb() -> float:
    """This process's resident memory (the server runs in it), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def requests(run_id: str, names: list[str], legal=None):
    """A Hypothesis strategy over Federation requests (``run_id`` and tensor ``names`` of the
    open run mixed in, so that some messages get past the first checks). ``legal(request)`` marks
    the requests left out because an honest site may send them (default: site A's Decline of
    round 1)."""
    from hypothesis import strategies as st

    # mostly site A, the open run and its round: such messages reach the deepest checks
    def mostly(values, other):  # one draw in five from ``other``
        return st.one_of(*[st.sampled_from(values)] * 4, other)

    site = mostly(["A"] * 8 + ["B", "C"] * 2 + ["E", "Z", "", "a", "A" * 300], st.text(max_size=40))
    run = mostly([run_id] * 12 + ["", run_id + "x"], st.text(max_size=30))
    rnd = mostly([1] * 12 + [0, 2], st.integers(0, 2**32 - 1))
    n = st.sampled_from([1, 10, 2**22, 10**9, 0, -1]) | st.integers(-(2**63), 2**63 - 1)
    scalar = st.one_of(
        st.builds(tpb.Scalar, float_value=st.floats(allow_nan=True, allow_infinity=True)),
        st.builds(tpb.Scalar, int_value=st.integers(-(2**63), 2**63 - 1)),
        st.builds(tpb.Scalar, bool_value=st.booleans()),
        st.builds(tpb.Scalar, string_value=st.text(max_size=50)),
    )
    metric_keys = st.sampled_from(
        ["loss", "train_time_s", "clipped", "pixels", "pred_sum", "epsilon", "accountant_history"]
    ) | st.text(max_size=20)
    metrics = st.dictionaries(metric_keys, scalar, max_size=6)
    tensor = st.builds(
        tpb.Tensor,
        name=st.sampled_from(names) | st.text(max_size=20),
        dtype=st.sampled_from(["float32", "float64", "uint32", "int16", "object", "<f4", ""])
        | st.text(max_size=8),
        shape=st.lists(st.integers(-2, 2**40), max_size=4),
        data=st.binary(max_size=256),
    )
    tensors = st.lists(tensor, max_size=3)
    # some ciphertexts/shares of the right lengths (AES-GCM of two shares; one Shamir share)
    blob = st.binary(max_size=64) | st.sampled_from([CT_LEN, SHARE_LEN]).flatmap(
        lambda n: st.binary(min_size=n, max_size=n)
    )
    blobs = st.dictionaries(site, blob, max_size=4)
    # key bindings (mutual TLS) at and just over their bounds too: relayed, never parsed here
    binding = st.binary(max_size=64) | st.sampled_from(
        [MAX_SIGNATURE_BYTES, MAX_SIGNATURE_BYTES + 1, MAX_CERT_BYTES, MAX_CERT_BYTES + 1]
    ).flatmap(lambda n: st.binary(min_size=n, max_size=n))
    keys = st.builds(
        pb.PublicKeys,
        enc_pk=st.binary(max_size=40),
        mask_pk=st.binary(max_size=40),
        signature=binding,
        certificate=binding,
    )
    common = {"site_id": site, "run_id": run, "round": rnd}
    if legal is None:

        def legal(r):
            return isinstance(r, pb.DeclineRequest) and (r.site_id, r.run_id, r.round) == (
                "A",
                run_id,
                1,
            )

    return st.one_of(
        st.builds(pb.RegisterSiteRequest, site_id=site, info=metrics),
        st.builds(pb.PullTaskRequest, site_id=site, run_id=run, round=rnd),
        st.builds(pb.HeartbeatRequest, site_id=site, run_id=run, round=rnd),
        st.builds(pb.PushUpdateRequest, **common, tensors=tensors, num_examples=n, metrics=metrics),
        st.builds(pb.PushEvaluationRequest, **common, num_examples=n, metrics=metrics),
        st.builds(pb.DeclineRequest, **common, reason=st.text(max_size=100)),
        st.builds(pb.AdvertiseKeysRequest, **common, keys=keys, num_examples=n, metrics=metrics),
        st.builds(pb.ShareKeysRequest, **common, ciphertexts=blobs),
        st.builds(pb.PushMaskedInputRequest, **common, masked=tensor, metrics=metrics),
        st.builds(pb.ConfirmRequest, **common, tags=blobs),
        st.builds(pb.UnmaskRequest, **common, shares=blobs),
        _raw(RPCS.values()),
    ).filter(lambda r: isinstance(r, Raw) or not legal(r))


def release_requests(size: int):
    """A Hypothesis strategy over release-service requests for a model of side ``size``."""
    from hypothesis import strategies as st

    # mostly the default model and legal-looking batches: such requests reach the deepest checks
    names = [
        "other",
        "./other",
        "missing",
        "../rel",
        "/etc/passwd",
        "other/../../rel",
        "a" * 300,
        "\x00",
    ]
    model = st.one_of(*[st.just("")] * 6, st.sampled_from(names), st.text(max_size=40))
    n = st.sampled_from([1, 2, 8, 9, 0, -1, 100_000]) | st.integers(-2, 2**40)
    side = st.sampled_from([size] * 4 + [16, 0])
    shape = st.tuples(n, side, side).map(list) | st.lists(st.integers(-2, 2**40), max_size=5)
    dtype = st.sampled_from(["int16"] * 4 + ["float32", "uint8", "<i2", "object", ""])
    data = st.binary(max_size=64) | st.sampled_from([1, 2]).map(
        lambda k: bytes(k * size * size * 2)
    )
    tensor = st.builds(
        tpb.Tensor,
        name=st.sampled_from(["images"]) | st.text(max_size=10),
        dtype=dtype | st.text(max_size=8),
        shape=shape,
        data=data,
    )
    predict = st.builds(ipb.PredictRequest, model=model, images=tensor)
    describe = st.builds(ipb.DescribeRequest, model=model)
    return st.one_of(*[predict] * 6, describe, _raw(["Predict", "Describe"]))


class _Target:
    """Sends requests to one service and counts the statuses it answered."""

    SERVICE = ""

    def connect(self, address: str) -> None:
        self.channel = create_channel(address)
        self.statuses: collections.Counter = collections.Counter()

    def call(self, request):
        if isinstance(request, Raw):
            return self.channel.unary_unary(f"/{self.SERVICE}/{request.rpc}")(
                request.data, timeout=30
            )
        return getattr(self.stub, self.rpc_of(request))(request, timeout=30)

    def send(self, request) -> str:
        """Send one request; the status name it got back (never raises for an RPC error)."""
        try:
            self.call(request)
            code = "OK"
        except grpc.RpcError as err:
            code = err.code().name
        self.statuses[code] += 1
        return code


class FuzzTarget(_Target):
    """A real server with an open fit phase; ``send`` any request; ``finish`` the round honestly."""

    SERVICE = "fedonco.v1.Federation"
    overrides = {"fl.min_fit_sites": 1, "secagg.enabled": False}
    honest = ("A",)

    def __init__(self, data_dir: Path, work: Path, cfg=None) -> None:
        from common.config import load_profile, with_overrides
        from server.app import Server
        from server.campaign import federation_message_limit, serve_campaign

        cfg = with_overrides(
            cfg or load_profile("smoke"),
            **{
                "train.rounds": 1,
                "fl.wait_for_sites_s": 2.0,
                "fl.round_timeout_s": 3600.0,
                "fl.heartbeat_s": 5.0,
                **self.overrides,
            },
        )
        self.cfg = cfg
        self.srv = Server(cfg, "fedavg", data_dir, work / "run", resume=False)
        port_file, self.box = work / "port", {}
        limit = federation_message_limit(cfg, ["fedavg"])
        self.thread = threading.Thread(
            target=lambda: self.box.setdefault(
                "result",
                serve_campaign(
                    [lambda: self.srv], "127.0.0.1:0", port_file, max_message_bytes=limit
                )[0],
            ),
            daemon=True,
        )
        self.thread.start()
        end = time.monotonic() + 60
        while not port_file.exists():
            if time.monotonic() > end:
                raise TimeoutError("the fuzz target's server did not start")
            time.sleep(0.05)
        self.connect(f"127.0.0.1:{port_file.read_text()}")
        self.stub = pb_grpc.FederationStub(self.channel)
        for site in self.honest:
            self.run_id = self.stub.RegisterSite(
                pb.RegisterSiteRequest(site_id=site), timeout=10
            ).run_id
        tasks = {site: self.pull(site).fit for site in self.honest}
        self.sent = {site: proto_to_ndarrays(t.tensors) for site, t in tasks.items()}
        # what a site binds its secure-aggregation masks to (common.secagg.mask_context)
        self.digest = {
            site: round_digest(self.sent[site], scalars_from_proto(t.config))
            for site, t in tasks.items()
        }

    def pull(self, site: str, kind: str = "fit", timeout: float = 60.0):
        """Site's next task of ``kind`` (fit, secagg), polling until it is there."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            r = self.stub.PullTask(pb.PullTaskRequest(site_id=site, run_id=self.run_id), timeout=30)
            if r.WhichOneof("task") == kind:
                return r
        raise TimeoutError(f"site {site}: no {kind} task within {timeout:.0f}s")

    @property
    def names(self) -> list[str]:
        return sorted(self.sent["A"])

    def legal(self, request) -> bool:
        """Site A's Decline of the open round is a legal action, not an attack."""
        return isinstance(request, pb.DeclineRequest) and (
            request.site_id,
            request.run_id,
            request.round,
        ) == ("A", self.run_id, 1)

    def strategy(self):
        return requests(self.run_id, self.names, self.legal)

    @staticmethod
    def rpc_of(request) -> str:
        return RPCS[type(request)]

    def alive(self) -> bool:
        return self.thread.is_alive() and "result" not in self.box

    def final_model(self, timeout: float) -> dict:
        from common.io import load_npz

        self.thread.join(timeout=timeout)
        return load_npz(self.srv.layout.final_model)

    def finish(self, timeout: float = 120.0) -> tuple[dict, dict]:
        """Site A's honest update closes the round: (final model, what it must equal)."""
        from common.training.local import weighted_contribution

        mine = {k: v + np.float32(0.5) for k, v in self.sent["A"].items()}
        req = pb.PushUpdateRequest(
            site_id="A",
            run_id=self.run_id,
            round=1,
            num_examples=10,
            tensors=ndarrays_to_proto(weighted_contribution(mine, 10)),
        )
        self.stub.PushUpdate(req, timeout=30)
        return self.final_model(timeout), mine


class SecAggFuzzTarget(FuzzTarget):
    """A real server running one round under secure aggregation with three honest sites;
    ``stages()`` walks the round, yielding at each stage while site C still owes its answer."""

    overrides = {"fl.min_fit_sites": 3, "secagg.enabled": True, "secagg.threshold": 3}
    honest = ("A", "B", "C")
    STAGES = ("advertise_keys", "share_keys", "masked_input", "consistency", "unmask")
    REQUEST = {
        "advertise_keys": pb.AdvertiseKeysRequest,
        "share_keys": pb.ShareKeysRequest,
        "masked_input": pb.PushMaskedInputRequest,
        "consistency": pb.ConfirmRequest,
        "unmask": pb.UnmaskRequest,
    }

    def __init__(self, data_dir: Path, work: Path, cfg=None) -> None:
        super().__init__(data_dir, work, cfg)
        from common.secagg import SecAggClient

        keys = self.names
        # fixed updates, one offset and weight per site: the result is known in advance
        self.updates = {
            s: {k: v + np.float32(0.25 * (i + 1)) for k, v in self.sent[s].items()}
            for i, s in enumerate(self.honest)
        }
        self.weights = {s: 10 * (i + 1) for i, s in enumerate(self.honest)}
        self.clients = {s: SecAggClient(s, self.run_id, 1) for s in self.honest}
        self.vectors = {
            s: np.concatenate([self.updates[s][k].ravel() for k in keys]).astype(np.float64)
            * self.weights[s]
            for s in self.honest
        }
        self.stage = None

    def legal(self, request) -> bool:
        """Any Decline of the open round by an honest site, and C's own answer to the open stage."""
        where = (getattr(request, "run_id", None), getattr(request, "round", None))
        ours = request.site_id in self.honest and where == (self.run_id, 1)
        if not ours:
            return False
        if isinstance(request, pb.DeclineRequest):
            return True
        return request.site_id == "C" and isinstance(request, self.REQUEST[self.stage])

    def answer(self, site: str, stage: str) -> None:
        """Site's honest answer to ``stage`` (it pulls the stage's task first)."""
        from common.secagg import quantize
        from common.wire.serde import scalars_to_proto

        c, base = self.clients[site], {"site_id": site, "run_id": self.run_id, "round": 1}
        if stage == "advertise_keys":
            enc, mask = c.advertise_keys()
            self.stub.AdvertiseKeys(
                pb.AdvertiseKeysRequest(
                    **base,
                    keys=pb.PublicKeys(enc_pk=enc, mask_pk=mask),
                    num_examples=self.weights[site],
                    metrics=scalars_to_proto({"train_time_s": 0.1}),
                ),
                timeout=30,
            )
            return
        task = self.pull(site, "secagg").secagg
        assert task.WhichOneof("stage") == stage, (site, task.WhichOneof("stage"), stage)
        if stage == "share_keys":
            st = task.share_keys
            keys = {s: (k.enc_pk, k.mask_pk) for s, k in st.public_keys.items()}
            cts = c.share_keys(keys, int(st.threshold), list(st.neighbours))
            self.stub.ShareKeys(pb.ShareKeysRequest(**base, ciphertexts=cts), timeout=30)
        elif stage == "masked_input":
            st = task.masked_input
            q, clipped = quantize(self.vectors[site], self.weights[site], st.clip, st.scale)
            context = mask_context(self.digest[site], st.scale, st.clip)
            masked = c.masked_input(dict(st.ciphertexts), q, context)
            masked = ndarrays_to_proto({"masked": masked})[0]
            self.stub.PushMaskedInput(
                pb.PushMaskedInputRequest(
                    **base, masked=masked, metrics=scalars_to_proto({"clipped": clipped})
                ),
                timeout=30,
            )
        elif stage == "consistency":
            tags = c.confirm(list(task.consistency.survivors))
            self.stub.Confirm(pb.ConfirmRequest(**base, tags=tags), timeout=30)
        else:
            st = task.unmask
            shares = c.unmask(list(st.survivors), list(st.dropped), dict(st.confirmations))
            self.stub.Unmask(pb.UnmaskRequest(**base, shares=shares), timeout=30)

    def stages(self):
        """Per stage: A and B answer, yield the stage's name (fuzz now), then C answers."""
        for stage in self.STAGES:
            self.stage = stage
            for site in ("A", "B"):
                self.answer(site, stage)
            yield stage
            self.answer("C", stage)
        self.stage = None

    def expected(self) -> dict:
        total = sum(self.weights.values())
        return {
            k: sum(self.updates[s][k] * self.weights[s] for s in self.honest) / total
            for k in self.names
        }


class ReleaseFuzzTarget(_Target):
    """A real release service on 127.0.0.1: a default model (side ``SIZE``, at most ``MAX_BATCH``
    slices a call) and a models root holding one more (``other``)."""

    SERVICE = "fedonco.v1.Inference"
    SIZE, MAX_BATCH = 32, 8

    def __init__(self, work: Path) -> None:
        from common.model import build_model, get_params
        from common.release import export_release
        from server import inference

        info = {
            "method": "fedavg",
            "base": 4,
            "norm": "batch",
            "groups": 2,
            "image_size": self.SIZE,
            "window": [-160, 240],
        }
        params = get_params(build_model(4, "batch", 2, seed=0))
        export_release(work / "rel", params, info)
        export_release(work / "models" / "other", params, info)
        store = inference.ModelStore(work / "rel", [work / "models"])
        self.servicer = inference.InferenceServicer(store, self.MAX_BATCH)
        self.server, port = create_server(
            "127.0.0.1:0",
            [(ipb_grpc.add_InferenceServicer_to_server, self.servicer)],
            max_receive_bytes=inference.request_limit(store, self.MAX_BATCH),
            max_concurrent_rpcs=inference.RELEASE_CONCURRENT_RPCS,
            options=inference.RELEASE_SERVER_OPTIONS,
        )
        self.server.start()
        self.connect(f"127.0.0.1:{port}")
        self.stub = ipb_grpc.InferenceStub(self.channel)

    def strategy(self):
        return release_requests(self.SIZE)

    @staticmethod
    def rpc_of(request) -> str:
        return "Predict" if isinstance(request, ipb.PredictRequest) else "Describe"

    def alive(self) -> bool:
        """A legal Predict is answered, with probabilities of the right shape."""
        images = ndarrays_to_proto({"images": np.zeros((2, self.SIZE, self.SIZE), np.int16)})[0]
        probs = self.stub.Predict(ipb.PredictRequest(images=images), timeout=30).probs
        return tuple(probs.shape) == (2, self.SIZE, self.SIZE)

    def close(self) -> None:
        self.server.stop(None)


def model_is(final: dict, expected: dict, atol: float = 1e-6) -> bool:
    """The global model equals the honest update(s) (up to float32 rounding of n·w / n, or the
    quantisation of secure aggregation: ``atol``)."""
    return set(final) == set(expected) and all(
        np.allclose(final[k], expected[k], rtol=1e-6, atol=atol) for k in expected
    )


def fuzz(target, messages: int, seed_: int, progress=None) -> None:
    """Send ``messages`` Hypothesis-drawn requests to ``target``; fail if the server stops."""
    from hypothesis import HealthCheck, given, seed, settings

    @seed(seed_)
    @settings(
        max_examples=messages, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(target.strategy())
    def one(request):
        target.send(request)
        if progress is not None:
            progress.update(1)
        assert target.alive(), "the server stopped while being fuzzed"

    one()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--messages",
        type=int,
        default=20_000,
        help="messages to the Federation service, and as many to the release service "
        "(default %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from tqdm import tqdm

    from common.config import load_profile
    from common.data.build import build_dataset

    with tempfile.TemporaryDirectory() as tmp, LogTally() as logs:
        work = Path(tmp)
        build_dataset(load_profile("smoke"), work / "data", workers=1, gallery=False)
        per_stage = args.messages // 4 // len(SecAggFuzzTarget.STAGES)
        plain = args.messages - per_stage * len(SecAggFuzzTarget.STAGES)
        bar = tqdm(total=2 * args.messages, unit="msg", desc="fuzz")
        target = FuzzTarget(work / "data", work / "plain")
        rss0, start = rss_mb(), time.perf_counter()
        fuzz(target, plain, args.seed, bar)
        rss1 = rss_mb()
        final, expected = target.finish()
        report = {
            "plain": {
                "messages": sum(target.statuses.values()),
                "statuses": dict(target.statuses),
                "rss_mb_before": round(rss0, 1),
                "rss_mb_after": round(rss1, 1),
                "server_alive_throughout": True,
                "round_completed": target.box.get("result", {}).get("rounds") == 1,
                "model_is_the_honest_update": model_is(final, expected),
            }
        }
        sec = SecAggFuzzTarget(work / "data", work / "secagg")
        per = {}
        for i, stage in enumerate(sec.stages()):
            before = collections.Counter(sec.statuses)
            fuzz(sec, per_stage, args.seed + 1 + i, bar)
            per[stage] = dict(sec.statuses - before)
        final = sec.final_model(120.0)
        report["secagg"] = {
            "messages": sum(sec.statuses.values()),
            "statuses_per_stage": per,
            "server_alive_throughout": True,
            "round_completed": sec.box.get("result", {}).get("rounds") == 1,
            "model_is_the_honest_mean": model_is(final, sec.expected(), atol=1e-5),
        }
        release = ReleaseFuzzTarget(work / "release")
        rss0 = rss_mb()
        fuzz(release, args.messages, args.seed + 100, bar)
        report["release"] = {
            "messages": sum(release.statuses.values()),
            "statuses": dict(release.statuses),
            "rss_mb_before": round(rss0, 1),
            "rss_mb_after": round(rss_mb(), 1),
            "legal_predict_answered_at_the_end": release.alive(),
        }
        release.close()
        bar.close()
        report["wall_s"] = round(time.perf_counter() - start, 1)
        unknown = target.statuses["UNKNOWN"] + sec.statuses["UNKNOWN"] + release.statuses["UNKNOWN"]
        report["checks"] = {
            "unknown_statuses": unknown,
            "log_lines": logs.lines,
            "log_lines_with_a_traceback": logs.tracebacks,
        }
        print(json.dumps(report, indent=1))
        ok = all(r["round_completed"] for r in (report["plain"], report["secagg"]))
        ok = ok and report["plain"]["model_is_the_honest_update"]
        ok = ok and report["secagg"]["model_is_the_honest_mean"]
        ok = ok and report["release"]["legal_predict_answered_at_the_end"]
        return 0 if ok and not unknown and not logs.tracebacks else 1


if __name__ == "__main__":
    sys.exit(main())
