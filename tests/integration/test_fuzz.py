"""Property-based fuzzing of the Federation service (bench/fuzz.py), bounded for `make test`:
whatever a caller sends, the server never exits, a rejected request costs bounded memory, and the
model ends exactly as the honest site made it (issue 15). `make fuzz` runs 20,000 messages."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, seed, settings

from bench.fuzz import FuzzTarget, model_is, requests, rss_mb
from common.wire.rpc import federation_pb2 as pb
from common.wire.serde import ndarrays_to_proto

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def target(smoke_data, tmp_path_factory):
    return FuzzTarget(smoke_data, tmp_path_factory.mktemp("fuzz"))


def test_fuzzed_messages_never_stop_the_server(target):
    @seed(1234)
    @settings(max_examples=400, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(requests(target.run_id, target.names))
    def fuzz(request):
        target.send(request)
        assert target.alive(), "the server stopped while being fuzzed"

    fuzz()
    assert target.statuses["NOT_FOUND"] and target.statuses["INVALID_ARGUMENT"]


def test_rejected_requests_cost_bounded_memory(target):
    # 20 KiB of caller-chosen id and 64 KiB of payload each: kept whole (as before issue 15),
    # 10,000 of them would grow the server by ~200 MB
    junk = ndarrays_to_proto({"w": np.zeros(16_384, np.float32)})
    bad = pb.PushUpdateRequest(site_id="Z" * 20_480, run_id="forged", round=1, tensors=junk,
                               num_examples=10)  # fmt: skip
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
