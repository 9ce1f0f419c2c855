"""gRPC channel and server options, in one place, and the server/channel factories.

Both ends must agree on the message limits: gRPC's default receive limit is 4 MiB, and the paper's
~1.2M-parameter U-Net is ~4.7 MiB of float32 per message, so an unraised limit fails with
RESOURCE_EXHAUSTED. Clients always dial the server (sites sit behind firewalls); the server never
dials a site.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent import futures
from typing import Any

import grpc

from common.logthrottle import Throttle
from common.wire.options import HealthOptions

log = logging.getLogger(__name__)
# gRPC logs a multi-line traceback for every request it cannot deserialise: anyone can send such
# requests, so those lines are bounded and kept to one line each (common/logthrottle.py).
_GRPC_LOGS = ("grpc._common", "grpc._server")

MiB = 1024 * 1024
# Largest message either end accepts. 256 MiB fits a ~60M-parameter float32 model in one unary
# message; far above our U-Net, far below protobuf's hard 2 GiB ceiling.
MAX_MESSAGE_BYTES = 256 * MiB

_MESSAGE_LIMITS: list[tuple[str, Any]] = [
    # Largest message this end will send (default: unlimited, but set it to fail loudly and early).
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # Largest message this end will accept (default 4 MiB: too small for a model update).
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]

CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    *_MESSAGE_LIMITS,
    # Ping the server every 60 s so a NAT or cloud load balancer (idle timeouts of 4-10 min) does
    # not silently drop the connection of a site that is busy training between two calls.
    ("grpc.keepalive_time_ms", 60_000),
    # Consider the connection dead when a ping is not acknowledged within 20 s; the next call then
    # reconnects instead of hanging.
    ("grpc.keepalive_timeout_ms", 20_000),
    # Keep pinging while no call is in flight (a site training for minutes has no open call).
    ("grpc.keepalive_permit_without_calls", 1),
    # Unlimited pings without data: the keepalive above is the only pinger.
    ("grpc.http2.max_pings_without_data", 0),
    # Reconnect quickly after the server restarts (resume): back off from 1 s up to 10 s.
    ("grpc.initial_reconnect_backoff_ms", 1_000),
    ("grpc.max_reconnect_backoff_ms", 10_000),
]

SERVER_OPTIONS: list[tuple[str, Any]] = [
    *_MESSAGE_LIMITS,
    # Accept the clients' keepalive pings even when no call is open (must match the channel side,
    # or the server answers GOAWAY "too_many_pings" and drops the site).
    ("grpc.keepalive_permit_without_calls", 1),
    # The shortest ping interval a client may use without being penalised: half of the clients'
    # 60 s, so a client is never punished for a ping that arrives a little early.
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 30_000),
    # Never kick a client for pinging too often (a misbehaving site must not lose its round).
    ("grpc.http2.max_ping_strikes", 0),
    # Do not share the port with another process: with SO_REUSEPORT (gRPC's Linux default) a
    # second server on the same port would silently receive half of the connections.
    ("grpc.so_reuseport", 0),
]

# A servicer registration, e.g. (federation_pb2_grpc.add_FederationServicer_to_server, servicer).
Registration = tuple[Callable[[Any, grpc.Server], None], Any]


def create_server(
    address: str,
    services: Sequence[Registration],
    *,
    max_workers: int = 16,
    credentials: grpc.ServerCredentials | None = None,
    health: bool = True,
    max_receive_bytes: int = MAX_MESSAGE_BYTES,
    max_concurrent_rpcs: int | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> tuple[grpc.Server, int]:
    """Build, bind and return a server that is **not started yet**, and the port it bound.

    ``address`` is "host:port"; port 0 picks a free port (tests). With ``health`` the standard
    gRPC health service is added and reports SERVING for the whole server ("") once started.
    ``credentials`` switches to TLS (mTLS when they require client certificates).
    ``max_receive_bytes``: the largest request accepted, checked by gRPC before any decoding (a
    service derives it from what a legal request can be: a model update, a batch of slices);
    ``max_concurrent_rpcs``: calls beyond it are refused with RESOURCE_EXHAUSTED instead of
    queuing without bound; ``options``: more gRPC server options (a service's own).
    """
    for name in _GRPC_LOGS:
        grpc_log = logging.getLogger(name)
        if not any(isinstance(f, Throttle) for f in grpc_log.filters):
            grpc_log.addFilter(Throttle(tracebacks=False))
    limit = ("grpc.max_receive_message_length", int(min(max_receive_bytes, MAX_MESSAGE_BYTES)))
    server_options = [o for o in SERVER_OPTIONS if o[0] != limit[0]] + [limit, *options]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers),
        options=server_options,
        maximum_concurrent_rpcs=max_concurrent_rpcs,
    )
    for add_to_server, servicer in services:
        add_to_server(servicer, server)
    if health:
        from grpc_health.v1 import health as grpc_health
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        health_servicer = grpc_health.HealthServicer()
        health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as err:  # recent grpcio raises; older ones return 0
        raise ValueError(
            f"cannot bind gRPC server to {address!r}: the port is in use or the "
            "address is not this machine's (port 0 picks a free port)"
        ) from err
    if port == 0:
        raise ValueError(
            f"cannot bind gRPC server to {address!r}: the port is in use or the "
            "address is not this machine's (port 0 picks a free port)"
        )
    log.info("gRPC server bound to %s (port %d)", address, port)
    return server, port


def create_channel(
    address: str, *, credentials: grpc.ChannelCredentials | None = None
) -> grpc.Channel:
    """A client channel with the shared options; TLS when ``credentials`` are given."""
    if credentials is None:
        return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    return grpc.secure_channel(address, credentials, options=CHANNEL_OPTIONS)


def check_health(
    address: str, credentials: grpc.ChannelCredentials | None = None, timeout: float = 5.0
) -> bool:
    """Whether the server at ``address`` answers the standard health check with SERVING."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    channel = create_channel(address, credentials=credentials)
    try:
        resp = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=timeout
        )
        return resp.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError as err:
        log.info("health check of %s failed: %s", address, err.code().name)
        return False
    finally:
        channel.close()


def run_health_cmd(args: HealthOptions) -> int:
    if args.tls_check:
        return _tls_check(args.address, args.tls_dir, args.tls_check)
    creds = None
    if args.tls_dir:
        from common.wire.tls import channel_credentials

        creds = channel_credentials(args.tls_dir)
    ok = check_health(args.address, creds, args.timeout)
    print("SERVING" if ok else "NOT SERVING")
    return 0 if ok else 1


def _tls_check(address: str, tls_dir, site: str) -> int:
    from pathlib import Path

    from common.wire.tls import certificate_site, diagnose_tls

    if not tls_dir:
        raise ValueError("--tls-check needs --tls-dir (or FEDONCO_TLS_DIR)")
    named = certificate_site(Path(tls_dir))
    if named != site:
        raise ValueError(f"{tls_dir}: the client certificate is for site {named!r}, not {site!r}")
    cause = diagnose_tls(address, Path(tls_dir))
    if cause:
        raise ValueError(f"site {site}: no TLS to {address}: {cause}")
    print(f"site {site}: TLS to {address}: ok (or nothing listens yet)")
    return 0
