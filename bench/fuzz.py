"""Fuzz the Federation service as a hostile caller would, against a real server in this process.

``FuzzTarget`` starts a real server (FedAvg, one round, plaintext updates, site A registered and
handed its fit task, so the round's fit phase is open) on 127.0.0.1 and sends it whatever it is
given; ``requests()`` is a Hypothesis strategy over every Federation request message — random
and known site ids, run ids, rounds, tensors (names, dtypes, shapes, bytes), weights, metrics of
every scalar type, keys, ciphertexts and shares. The one message left out is site A's own
Decline of its open round: that is a legal action, not an attack. At the end site A sends its
honest update: the round must complete and the global model must be exactly A's update, so
nothing the fuzzer sent touched it.

``make fuzz`` (``python -m bench.fuzz --messages 20000``) prints the statuses the server
answered, the server's RSS before and after, and the check; tests/integration/test_fuzz.py runs a
bounded version in ``make test``.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np

from common.wire.channel import create_channel
from common.wire.rpc import federation_pb2 as pb
from common.wire.rpc import federation_pb2_grpc as pb_grpc
from common.wire.rpc import types_pb2 as tpb
from common.wire.serde import ndarrays_to_proto, proto_to_ndarrays

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
    pb.UnmaskRequest: "Unmask",
}


def rss_mb() -> float:
    """This process's resident memory (the server runs in it), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def requests(run_id: str, names: list[str]):
    """A Hypothesis strategy over Federation requests (``run_id`` and tensor ``names`` of the
    open run mixed in, so that some messages get past the first checks)."""
    from hypothesis import strategies as st

    # mostly site A, the open run and its round: such messages reach the deepest checks
    def mostly(values, other):  # one draw in five from ``other``
        return st.one_of(*[st.sampled_from(values)] * 4, other)

    site = mostly(["A"] * 12 + ["B", "E", "Z", "", "a", "A" * 300], st.text(max_size=40))
    run = mostly([run_id] * 12 + ["", run_id + "x"], st.text(max_size=30))
    rnd = mostly([1] * 12 + [0, 2], st.integers(0, 2**32 - 1))
    n = st.sampled_from([1, 10, 2**22, 10**9, 0, -1]) | st.integers(-(2**63), 2**63 - 1)
    scalar = st.one_of(
        st.builds(tpb.Scalar, float_value=st.floats(allow_nan=True, allow_infinity=True)),
        st.builds(tpb.Scalar, int_value=st.integers(-(2**63), 2**63 - 1)),
        st.builds(tpb.Scalar, bool_value=st.booleans()),
        st.builds(tpb.Scalar, string_value=st.text(max_size=50)),
    )
    metric_keys = st.sampled_from(["loss", "train_time_s", "clipped", "pixels", "pred_sum",
                                   "epsilon", "accountant_history"]) | st.text(max_size=20)  # fmt: skip
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
    blobs = st.dictionaries(site, st.binary(max_size=64), max_size=4)
    keys = st.builds(pb.PublicKeys, enc_pk=st.binary(max_size=40), mask_pk=st.binary(max_size=40))
    common = {"site_id": site, "run_id": run, "round": rnd}
    return st.one_of(
        st.builds(pb.RegisterSiteRequest, site_id=site, info=metrics),
        st.builds(pb.PullTaskRequest, site_id=site, run_id=run, round=rnd),
        st.builds(pb.HeartbeatRequest, site_id=site, run_id=run, round=rnd),
        st.builds(
            pb.PushUpdateRequest, **common, tensors=tensors, num_examples=n, metrics=metrics
        ),  # fmt: skip
        st.builds(pb.PushEvaluationRequest, **common, num_examples=n, metrics=metrics),
        st.builds(pb.DeclineRequest, **common, reason=st.text(max_size=100)).filter(
            lambda r: not (r.site_id == "A" and r.run_id == run_id and r.round == 1)
        ),
        st.builds(pb.AdvertiseKeysRequest, **common, keys=keys, num_examples=n, metrics=metrics),
        st.builds(pb.ShareKeysRequest, **common, ciphertexts=blobs),
        st.builds(pb.PushMaskedInputRequest, **common, masked=tensor, metrics=metrics),
        st.builds(pb.UnmaskRequest, **common, shares=blobs),
    )


class FuzzTarget:
    """A real server with an open fit phase; ``send`` any request; ``finish`` the round honestly."""

    def __init__(self, data_dir: Path, work: Path, cfg=None) -> None:
        from common.config import load_profile, with_overrides
        from server.app import Server
        from server.campaign import federation_message_limit, serve_campaign

        cfg = with_overrides(cfg or load_profile("smoke"), **{
            "train.rounds": 1, "fl.min_fit_sites": 1, "fl.wait_for_sites_s": 2.0,
            "fl.round_timeout_s": 3600.0, "fl.heartbeat_s": 5.0, "secagg.enabled": False})  # fmt: skip
        self.srv = Server(cfg, "fedavg", data_dir, work / "run", resume=False)
        port_file, self.box = work / "port", {}
        limit = federation_message_limit(cfg, ["fedavg"])
        self.thread = threading.Thread(target=lambda: self.box.setdefault(
            "result", serve_campaign([lambda: self.srv], "127.0.0.1:0", port_file,
                                     max_message_bytes=limit)[0]), daemon=True)  # fmt: skip
        self.thread.start()
        end = time.monotonic() + 60
        while not port_file.exists():
            if time.monotonic() > end:
                raise TimeoutError("the fuzz target's server did not start")
            time.sleep(0.05)
        self.stub = pb_grpc.FederationStub(create_channel(f"127.0.0.1:{port_file.read_text()}"))
        self.run_id = self.stub.RegisterSite(pb.RegisterSiteRequest(site_id="A"), timeout=10).run_id
        task = None
        while task is None:
            r = self.stub.PullTask(pb.PullTaskRequest(site_id="A", run_id=self.run_id), timeout=10)
            task = r.fit if r.WhichOneof("task") == "fit" else None
        self.sent = proto_to_ndarrays(task.tensors)
        self.statuses: collections.Counter = collections.Counter()

    @property
    def names(self) -> list[str]:
        return sorted(self.sent)

    def send(self, request) -> str:
        """Send one request; the status name it got back (never raises for an RPC error)."""
        try:
            getattr(self.stub, RPCS[type(request)])(request, timeout=30)
            code = "OK"
        except grpc.RpcError as err:
            code = err.code().name
        self.statuses[code] += 1
        return code

    def alive(self) -> bool:
        return self.thread.is_alive() and "result" not in self.box

    def finish(self, timeout: float = 120.0) -> tuple[dict, dict]:
        """Site A's honest update closes the round: (final model, what it must equal)."""
        from common.training.local import weighted_contribution

        mine = {k: v + np.float32(0.5) for k, v in self.sent.items()}
        req = pb.PushUpdateRequest(site_id="A", run_id=self.run_id, round=1, num_examples=10,
                                   tensors=ndarrays_to_proto(weighted_contribution(mine, 10)))  # fmt: skip
        self.stub.PushUpdate(req, timeout=30)
        self.thread.join(timeout=timeout)
        from common.io import load_npz

        return load_npz(self.srv.run_dir / "final_model.npz"), mine


def model_is(final: dict, expected: dict) -> bool:
    """The global model equals the honest update (up to float32 rounding of n·w / n)."""
    return set(final) == set(expected) and all(
        np.allclose(final[k], expected[k], rtol=1e-6, atol=1e-6) for k in expected
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--messages", type=int, default=20_000, help="messages to send (default %(default)s)"
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from hypothesis import HealthCheck, given, seed, settings
    from tqdm import tqdm

    from common.config import load_profile
    from common.data.build import build_dataset

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        build_dataset(load_profile("smoke"), work / "data", workers=1, gallery=False)
        target = FuzzTarget(work / "data", work)
        rss0, bar = rss_mb(), tqdm(total=args.messages, unit="msg", desc="fuzz")

        @seed(args.seed)
        @settings(max_examples=args.messages, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(requests(target.run_id, target.names))
        def fuzz(request):
            target.send(request)
            bar.update(1)
            assert target.alive(), "the server stopped while being fuzzed"

        start = time.perf_counter()
        fuzz()
        bar.close()
        rss1, wall = rss_mb(), time.perf_counter() - start
        final, expected = target.finish()
        unchanged = model_is(final, expected)
        report = {"messages": sum(target.statuses.values()), "statuses": dict(target.statuses),
                  "wall_s": round(wall, 1), "rss_mb_before": round(rss0, 1),
                  "rss_mb_after": round(rss1, 1), "server_alive_throughout": True,
                  "round_completed": target.box.get("result", {}).get("rounds") == 1,
                  "model_is_the_honest_update": unchanged}  # fmt: skip
        print(json.dumps(report, indent=1))
        return 0 if unchanged and report["round_completed"] else 1


if __name__ == "__main__":
    sys.exit(main())
