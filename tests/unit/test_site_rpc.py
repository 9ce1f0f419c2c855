"""A site's calls to the server: what it retries and what it gives up on (no network: the RPC
is a stand-in that fails with chosen status codes)."""

import logging

import grpc
import pytest

from client.app import SiteClient


class _Err(grpc.RpcError):
    def __init__(self, code):
        self._code = code

    def code(self):
        return self._code


class _Site:
    """The attributes SiteClient._rpc uses."""

    site, server, retry_timeout_s = "A", "fl.example:50051", 0.0

    def _check_tls(self):
        pass


def _flaky(codes):
    calls = []

    def method(request, timeout, wait_for_ready):
        calls.append(request)
        if len(calls) <= len(codes):
            raise _Err(codes[len(calls) - 1])
        return "answer"

    return method, calls


def test_a_site_retries_a_server_at_its_call_cap(monkeypatch, caplog):
    """RESOURCE_EXHAUSTED (the service's concurrent-call cap) is load, not an error: retried
    with backoff like an unreachable server, one log line per attempt."""
    monkeypatch.setattr("client.app.time.sleep", lambda s: None)
    codes = [grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE]
    method, calls = _flaky(codes)
    with caplog.at_level(logging.INFO, logger="client.app"):
        assert SiteClient._rpc(_Site(), method, "req") == "answer"
    assert len(calls) == 3
    assert sum("RESOURCE_EXHAUSTED, attempt 1" in r.message for r in caplog.records) == 1


def test_a_site_does_not_retry_a_refusal():
    method, calls = _flaky([grpc.StatusCode.PERMISSION_DENIED])
    with pytest.raises(grpc.RpcError):
        SiteClient._rpc(_Site(), method, "req")
    assert len(calls) == 1
