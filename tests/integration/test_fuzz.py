"""Property-based fuzzing of the Federation and release services (bench/fuzz.py), bounded for
`make test-heavy`: whatever a caller sends, the server never exits, no call gets UNKNOWN (an
exception escaping a handler) and no log line carries a traceback (issue 32), a rejected request
costs bounded memory, and the model ends exactly as the honest site made it (issue 15).
`make fuzz` runs 20,000 messages to each service."""

import numpy as np
import pytest

from bench.fuzz import (
    FuzzTarget,
    LogTally,
    ReleaseFuzzTarget,
    SecAggFuzzTarget,
    fuzz,
    model_is,
    rss_mb,
)
from common.wire.rpc import federation_pb2 as pb
from common.wire.serde import ndarrays_to_proto

pytestmark = [pytest.mark.slow, pytest.mark.heavy]


@pytest.fixture(scope="module")
def target(smoke_data, tmp_path_factory):
    return FuzzTarget(smoke_data, tmp_path_factory.mktemp("fuzz"))


def test_fuzzed_messages_never_stop_the_server(target):
    with LogTally() as logs:
        fuzz(target, 400, 1234)
    assert target.statuses["NOT_FOUND"] and target.statuses["INVALID_ARGUMENT"]
    assert target.statuses["INTERNAL"]  # raw bytes that are no request: gRPC's own answer
    assert not target.statuses["UNKNOWN"] and not logs.tracebacks, (target.statuses, logs.lines)


def test_rejected_requests_cost_bounded_memory(target):
    # 20 KiB of caller-chosen id and 64 KiB of payload each: kept whole (as before issue 15),
    # 10,000 of them would grow the server by ~200 MB
    junk = ndarrays_to_proto({"w": np.zeros(16_384, np.float32)})
    bad = pb.PushUpdateRequest(
        site_id="Z" * 20_480, run_id="forged", round=1, tensors=junk, num_examples=10
    )
    for _ in range(500):  # warm up the channel and the allocator
        target.send(bad)
    before = rss_mb()
    for _ in range(10_000):
        assert target.send(bad) == "NOT_FOUND"
    grown = rss_mb() - before
    assert grown <= 50.0, f"server RSS grew {grown:.1f} MB over 10,000 rejected requests"
    assert len(target.srv.state.rejections) <= 1000  # only the latest, without payloads


def test_the_round_then_completes_with_the_honest_update_alone(target):
    assert target.alive()
    final, expected = target.finish()
    assert target.box["result"]["rounds"] == 1
    assert model_is(final, expected)


def test_fuzzed_messages_at_every_secure_aggregation_stage(smoke_data, tmp_path_factory):
    """Three honest sites walk a secure-aggregation round; at each stage, while C still owes its
    answer, the fuzzer sends its messages (ciphertexts and shares of the right lengths among
    them). The server never stops, and the round ends with the honest sites' weighted mean."""
    sec = SecAggFuzzTarget(smoke_data, tmp_path_factory.mktemp("fuzz-secagg"))
    reached = {}
    for i, stage in enumerate(sec.stages()):
        before = sec.statuses.copy()
        with LogTally() as logs:
            fuzz(sec, 100, 99 + i)
        reached[stage] = sec.statuses - before
        assert not logs.tracebacks, stage
    assert all(sum(c.values()) == 100 and not c["UNKNOWN"] for c in reached.values())
    # some messages got past the caller checks into each stage's validation
    assert all(c["INVALID_ARGUMENT"] + c["FAILED_PRECONDITION"] for c in reached.values())
    final = sec.final_model(120.0)
    assert sec.box["result"]["rounds"] == 1
    assert model_is(final, sec.expected(), atol=1e-5)


def test_fuzzed_release_service_answers_every_call_precisely(tmp_path):
    # last: the Federation target above needs its site A heard from within three heartbeats
    release = ReleaseFuzzTarget(tmp_path)
    try:
        with LogTally() as logs:
            fuzz(release, 300, 4321)
        got = release.statuses
        assert got["OK"] and got["INVALID_ARGUMENT"] and got["NOT_FOUND"], got
        assert got["RESOURCE_EXHAUSTED"] and got["INTERNAL"], got
        assert not got["UNKNOWN"] and not logs.tracebacks, (got, logs.lines)
        assert release.alive()
    finally:
        release.close()
