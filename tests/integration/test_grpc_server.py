"""create_server / create_channel on 127.0.0.1: message limits, health service, port 0."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common.model import build_model, get_params
from common.wire import serde
from common.wire.channel import create_channel, create_server
from common.wire.rpc import federation_pb2, federation_pb2_grpc


class _EchoSizes(federation_pb2_grpc.FederationServicer):
    """Decodes a pushed update and remembers it; no round logic."""

    def __init__(self) -> None:
        self.received: dict[str, np.ndarray] = {}

    def PushUpdate(self, request, context):  # noqa: N802 (gRPC method name)
        try:
            self.received = serde.proto_to_ndarrays(request.tensors)
        except serde.TensorFormatError as err:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        return federation_pb2.PushUpdateResponse()


@pytest.fixture()
def served():
    servicer = _EchoSizes()
    server, port = create_server(
        "127.0.0.1:0", [(federation_pb2_grpc.add_FederationServicer_to_server, servicer)]
    )
    server.start()
    channel = create_channel(f"127.0.0.1:{port}")
    try:
        yield servicer, channel
    finally:
        channel.close()
        server.stop(None)


def test_paper_size_model_passes_the_message_limit(served) -> None:
    servicer, channel = served
    params = get_params(build_model(base=52, seed=0))  # ~1.23M params, > 4 MiB of float32
    tensors = serde.ndarrays_to_proto(params)
    assert serde.tensors_nbytes(tensors) > 4 * 1024 * 1024
    stub = federation_pb2_grpc.FederationStub(channel)
    request = federation_pb2.PushUpdateRequest(site_id="A", run_id="r", round=1, tensors=tensors)
    stub.PushUpdate(request, timeout=30, wait_for_ready=True)
    assert set(servicer.received) == set(params)
    for k, v in params.items():
        np.testing.assert_array_equal(servicer.received[k], v)


def test_bad_tensor_comes_back_as_invalid_argument(served) -> None:
    _, channel = served
    stub = federation_pb2_grpc.FederationStub(channel)
    bad = serde.Tensor(name="w", dtype="float32", shape=[2], data=b"\0" * 7)
    with pytest.raises(grpc.RpcError) as err:
        stub.PushUpdate(federation_pb2.PushUpdateRequest(tensors=[bad]), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'w'" in err.value.details() and "7 bytes" in err.value.details()


def test_health_service_reports_serving(served) -> None:
    _, channel = served
    health = health_pb2_grpc.HealthStub(channel)
    reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_binding_a_taken_port_fails_loudly() -> None:
    server, port = create_server("127.0.0.1:0", [])
    try:
        with pytest.raises(ValueError, match="cannot bind"):
            create_server(f"127.0.0.1:{port}", [])
    finally:
        server.stop(None)


def test_requests_above_the_services_limit_are_refused_before_decoding() -> None:
    servicer = _EchoSizes()
    server, port = create_server(
        "127.0.0.1:0",
        [(federation_pb2_grpc.add_FederationServicer_to_server, servicer)],
        max_receive_bytes=64 * 1024,
    )
    server.start()
    stub = federation_pb2_grpc.FederationStub(create_channel(f"127.0.0.1:{port}"))
    try:
        small = serde.ndarrays_to_proto({"w": np.zeros(1000, np.float32)})
        stub.PushUpdate(federation_pb2.PushUpdateRequest(tensors=small), timeout=10)
        big = serde.ndarrays_to_proto({"w": np.zeros(100_000, np.float32)})
        with pytest.raises(grpc.RpcError) as err:
            stub.PushUpdate(federation_pb2.PushUpdateRequest(tensors=big), timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert servicer.received["w"].size == 1000  # the big one never reached the servicer
    finally:
        server.stop(None)


def test_release_service_enforces_a_per_caller_query_budget(tmp_path) -> None:
    from common.release import export_release
    from common.wire.rpc import inference_pb2, inference_pb2_grpc
    from server.inference import InferenceServicer, ModelStore

    params = get_params(build_model(4, "batch", 2, seed=0))
    info = {
        "method": "fedavg",
        "base": 4,
        "norm": "batch",
        "groups": 2,
        "image_size": 32,
        "window": [-160, 240],
    }
    export_release(tmp_path / "rel", params, info)
    servicer = InferenceServicer(ModelStore(tmp_path / "rel"), max_batch=4, max_queries=6)
    server, port = create_server(
        "127.0.0.1:0", [(inference_pb2_grpc.add_InferenceServicer_to_server, servicer)]
    )
    server.start()
    stub = inference_pb2_grpc.InferenceStub(create_channel(f"127.0.0.1:{port}"))

    def predict(n):
        images = serde.ndarrays_to_proto({"images": np.zeros((n, 32, 32), np.int16)})[0]
        return stub.Predict(inference_pb2.PredictRequest(images=images), timeout=30)

    try:
        predict(4)
        predict(2)
        with pytest.raises(grpc.RpcError) as err:
            predict(1)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "budget" in err.value.details()
        assert list(servicer.queries.values()) == [6]
    finally:
        server.stop(None)


def _serve_release(tmp_path, tls_dir, client_certs: bool, max_queries=None):
    """A release service in a thread over TLS; yields its address, stops it at the end."""
    import threading
    import time

    from common.release import export_release
    from server.inference import serve

    params = get_params(build_model(4, "batch", 2, seed=0))
    info = {
        "method": "fedavg",
        "base": 4,
        "norm": "batch",
        "groups": 2,
        "image_size": 32,
        "window": [-160, 240],
    }
    export_release(tmp_path / "rel", params, info)
    port_file, stop_file = tmp_path / f"port-{client_certs}", tmp_path / f"stop-{client_certs}"
    thread = threading.Thread(
        target=serve,
        daemon=True,
        kwargs={
            "model_dir": tmp_path / "rel",
            "address": "localhost:0",
            "port_file": port_file,
            "exit_when": stop_file,
            "tls_dir": tls_dir,
            "client_certs": client_certs,
            "max_queries": max_queries,
        },
    )
    thread.start()
    end = time.monotonic() + 30
    while not port_file.exists() and time.monotonic() < end:
        time.sleep(0.05)
    try:
        yield f"localhost:{port_file.read_text()}"
    finally:
        stop_file.touch()
        thread.join(timeout=15)


def test_release_service_over_tls_with_and_without_client_certificates(tmp_path) -> None:
    from attacks.remote import ReleaseServiceError, RemoteModel
    from common.wire.tls import make_certs

    dirs = make_certs(tmp_path / "certs", ["A"])
    ca_only = tmp_path / "ca-only"
    ca_only.mkdir()
    (ca_only / "ca.crt").write_bytes((dirs["release"] / "ca.crt").read_bytes())
    images = np.zeros((2, 32, 32), np.int16)
    # server-authenticated TLS, its own certificate: a CA-only caller and one with a client
    # certificate are answered; a plaintext caller does not get through
    for address in _serve_release(tmp_path, dirs["release"], client_certs=False):
        for tls in (ca_only, dirs["attacker"]):
            assert RemoteModel(address, tls_dir=tls, timeout=10).predict(images).shape == (
                2,
                32,
                32,
            )
        with pytest.raises(ReleaseServiceError):
            RemoteModel(address, timeout=3).predict(images)
    # client certificates required: the attacker's certificate is answered and its queries are
    # counted under its name (budget 3 slices); a CA-only caller fails the handshake
    for address in _serve_release(tmp_path, dirs["release"], client_certs=True, max_queries=3):
        model = RemoteModel(address, tls_dir=dirs["attacker"], timeout=10)
        assert model.predict(images).shape == (2, 32, 32)
        with pytest.raises(ReleaseServiceError) as err:
            model.predict(images)
        assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "2 of 3" in err.value.details and "Predict failed" in str(err.value)
        with pytest.raises(ReleaseServiceError) as err:
            RemoteModel(address, tls_dir=ca_only, timeout=5).predict(images)
        # the handshake fails; RemoteModel waits for a ready channel until its deadline
        assert err.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    from server.inference import serve

    with pytest.raises(ValueError, match="need TLS"):
        serve(tmp_path / "rel", "localhost:0", client_certs=True)


def _server_cmd(smoke_data, run_dir, address, *extra):
    from bench.fleet import fedonco

    return fedonco(
        "server",
        "--config",
        "configs/smoke.toml",
        "--data",
        str(smoke_data),
        "--run-dir",
        str(run_dir),
        "--method",
        "fedavg",
        "--address",
        address,
        *extra,
    )


@pytest.mark.slow
def test_a_failed_server_start_leaves_no_run_behind_and_the_retry_starts(smoke_data, tmp_path):
    import subprocess

    taken, port = create_server("127.0.0.1:0", [])  # the port a first attempt collides with
    run_dir = tmp_path / "run"
    try:
        done = subprocess.run(
            _server_cmd(smoke_data, run_dir, f"127.0.0.1:{port}"),
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        taken.stop(None)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "fedonco server: error: cannot bind" in done.stderr and "Traceback" not in done.stderr
    assert not run_dir.exists()  # so a corrected retry is not told it "already holds a run"


@pytest.mark.slow
def test_sigterm_while_waiting_for_sites_stops_cleanly(smoke_data, tmp_path):
    import signal
    import subprocess

    from conftest import wait_until

    run_dir, port_file = tmp_path / "run", tmp_path / "port"
    proc = subprocess.Popen(
        _server_cmd(smoke_data, run_dir, "127.0.0.1:0", "--port-file", str(port_file)),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: port_file.is_file() and port_file.read_text(), 120, "the server's port")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err and "stopped before the first round" in err
    assert not run_dir.exists()


def test_release_service_refuses_an_oversized_batch_from_its_header_alone(tmp_path, caplog):
    """Issue 32: the receive limit was a full batch at 512x512 whatever the served model's size,
    and a batch was decoded before its size was checked (+98 MB per refused 4,096-slice request).
    Now the limit follows the served model, and the header is checked before any byte is read:
    a request claiming 100,000 slices with no data is refused for its size, not its bytes."""
    from common.wire.rpc import inference_pb2, inference_pb2_grpc
    from server.inference import MAX_SIDE, ModelStore, request_limit

    serving = _serve_release(tmp_path, None, False)  # a 32x32 model, max_batch 64
    address = next(serving)
    try:
        assert request_limit(ModelStore(tmp_path / "rel"), 64) == 64 * 32 * 32 * 2 + 65536
        assert request_limit(ModelStore(roots=[tmp_path]), 64) == 64 * MAX_SIDE**2 * 2 + 65536
        stub = inference_pb2_grpc.InferenceStub(create_channel(address))

        def refused(images):
            with pytest.raises(grpc.RpcError) as err:
                stub.Predict(inference_pb2.PredictRequest(images=images), timeout=30)
            return err.value.code(), err.value.details()

        big = serde.ndarrays_to_proto({"images": np.zeros((4096, 32, 32), np.int16)})[0]
        assert refused(big)[0] == grpc.StatusCode.RESOURCE_EXHAUSTED  # gRPC: over the byte limit
        empty = serde.Tensor(name="images", dtype="int16", shape=[100_000, 32, 32], data=b"")
        code, details = refused(empty)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "batch of 100000" in details, details
        code, details = refused(serde.Tensor(name="images", dtype="float64", shape=[1, 32, 32]))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "int16" in details, details
        code, details = refused(serde.Tensor(name="images", dtype="int16", shape=[2, 32, 32]))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "bytes of data" in details, details
        raw = create_channel(address).unary_unary("/fedonco.v1.Inference/Predict")
        for _ in range(50):  # undecodable requests: one line each, no traceback, bounded
            with pytest.raises(grpc.RpcError) as err:
                raw(b"\xff" * 64, timeout=10)
            assert err.value.code() == grpc.StatusCode.INTERNAL
        lines = [r for r in caplog.records if "deserializ" in r.getMessage()]
        assert 1 <= len(lines) <= 10 and "Traceback" not in caplog.text, caplog.text[-2000:]
        ok = serde.ndarrays_to_proto({"images": np.zeros((64, 32, 32), np.int16)})[0]
        probs = stub.Predict(inference_pb2.PredictRequest(images=ok), timeout=30).probs
        assert tuple(probs.shape) == (64, 32, 32)
    finally:
        serving.close()


def test_one_caller_holds_at_most_calls_per_caller_predicts_at_once(tmp_path) -> None:
    """Issue 32: the service admits 16 calls; one caller may hold at most 4 of them."""
    import contextlib

    from common.release import export_release
    from server.inference import InferenceServicer, ModelStore

    class Aborted(Exception):
        pass

    ports = iter(range(40000, 41000))

    class Context:
        def __init__(self, host):
            self.host = host

        def auth_context(self):
            return {}

        def peer(self):
            return f"ipv4:{self.host}:{next(ports)}"  # a new port per connection

        def abort(self, code, details):
            raise Aborted(code, details)

    params = get_params(build_model(4, "batch", 2, seed=0))
    export_release(
        tmp_path / "rel",
        params,
        {
            "method": "fedavg",
            "base": 4,
            "norm": "batch",
            "groups": 2,
            "image_size": 32,
            "window": [-160, 240],
        },
    )
    servicer = InferenceServicer(ModelStore(tmp_path / "rel"), calls_per_caller=4)
    with contextlib.ExitStack() as held:
        for _ in range(4):
            held.enter_context(servicer._call_slot(Context("10.0.0.1")))
        with pytest.raises(Aborted) as err:
            held.enter_context(servicer._call_slot(Context("10.0.0.1")))
        assert err.value.args[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
        with servicer._call_slot(Context("10.0.0.2")):  # another caller is not held up
            pass
    with servicer._call_slot(Context("10.0.0.1")):  # the slots came back
        assert servicer._in_flight == {"host:ipv4:10.0.0.1": 1}
    assert servicer._in_flight == {}


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_oversized_batches_in_bursts_do_not_grow_the_release_service(tmp_path) -> None:
    """Issue 32's check: 16 concurrent 4,096-slice batches for a 64x64 model, 5 times, against a
    real `fedonco release serve`. Before: each was received (33.5 MB limit), decoded, then
    refused, RSS 281 -> 1,111 MB. Measured since (this machine): +2 MB, +12..29 MB with gRPC's
    window probing on; the issue's bound is 100 MB."""
    import subprocess
    import sys
    import threading
    import time

    from common.release import export_release
    from common.wire.rpc import inference_pb2, inference_pb2_grpc

    export_release(
        tmp_path / "rel",
        get_params(build_model(8, "batch", 2, seed=0)),
        {
            "method": "fedavg",
            "base": 8,
            "norm": "batch",
            "groups": 2,
            "image_size": 64,
            "window": [-160, 240],
        },
    )
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.cli",
            "release",
            "serve",
            "--model",
            str(tmp_path / "rel"),
            "--address",
            "127.0.0.1:0",
            "--port-file",
            str(port_file),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        end = time.monotonic() + 60
        while not port_file.exists() and proc.poll() is None and time.monotonic() < end:
            time.sleep(0.05)
        stub = inference_pb2_grpc.InferenceStub(
            create_channel(f"127.0.0.1:{port_file.read_text()}")
        )
        small = serde.ndarrays_to_proto({"images": np.zeros((1, 64, 64), np.int16)})[0]
        stub.Predict(inference_pb2.PredictRequest(images=small), timeout=30)  # warm: model loaded
        before = _rss_mb(proc.pid)
        big = inference_pb2.PredictRequest(
            images=serde.ndarrays_to_proto({"images": np.zeros((4096, 64, 64), np.int16)})[0]
        )
        codes = []

        def one():
            with pytest.raises(grpc.RpcError) as err:
                stub.Predict(big, timeout=60)
            codes.append(err.value.code())

        for _ in range(5):
            threads = [threading.Thread(target=one) for _ in range(16)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        grown = _rss_mb(proc.pid) - before
        assert codes == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 80
        assert grown <= 100, f"the release service grew {grown:.0f} MB"
        stub.Predict(inference_pb2.PredictRequest(images=small), timeout=30)  # still answers
    finally:
        proc.terminate()
        proc.wait(timeout=30)
