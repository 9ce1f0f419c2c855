"""The Inference service: released models behind ``Predict`` / ``Describe`` over gRPC.

``fedonco release serve`` loads a release directory (``common/release.py``) and answers
``Predict`` with per-pixel probabilities; inputs are validated (dtype, shape, batch size) and
nothing but probabilities ever leaves: there is no RPC for weights, gradients or data.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from pathlib import Path

import grpc
import torch

from common.logthrottle import Throttle
from common.release import load_release
from common.transforms import predict_hu
from common.wire.channel import create_server
from common.wire.rpc import inference_pb2 as pb
from common.wire.rpc import inference_pb2_grpc as pb_grpc
from common.wire.serde import ndarrays_to_proto, proto_to_ndarrays
from server.options import ReleaseOptions

log = logging.getLogger(__name__)
log.addFilter(Throttle())  # it logs refusals of what any caller sends: bounded
MAX_BATCH = 64
MAX_SIDE = 512  # the largest image side a released model may take (the paper's is 256)
RELEASE_CONCURRENT_RPCS = 16
CALLS_PER_CALLER = 4  # Predicts one caller may have in flight: no one caller takes all 16
# HTTP/2 flow-control windows stay at their initial 64 KiB (no bandwidth-delay probing): with the
# probe, 16 oversized batches at once had gRPC buffer up to ~50 MB each burst before refusing
# them (RSS +12..29 MB after 5 bursts, peak +53 MB; without it +2 MB). Requests here are at most
# one batch of slices, so the cost is throughput on long, fast links only.
RELEASE_SERVER_OPTIONS = [("grpc.http2.bdp_probe", 0)]


MAX_NAME = 200  # characters of a model name


class ModelStore:
    """Released models by name: ``default`` answers the empty name; a name is a path relative to
    one of ``roots`` (e.g. ``<campaign>/fedavg/release`` or ``<run_id>/siteA``), loaded on first
    use and kept — keyed by the resolved directory, so aliases of one model (``a/./b``, ``a//b``)
    share one copy. Names are checked (length, no absolute paths, no ``..``, nothing outside the
    roots) and errors never reveal the server's paths."""

    def __init__(
        self,
        default: Path | None = None,
        roots: list[Path] | None = None,
        device: torch.device | None = None,
    ) -> None:
        self.roots = [Path(r).resolve() for r in roots or []]
        self.device = torch.device(device or "cpu")  # where every model it loads runs
        self._models: dict[str, tuple[torch.nn.Module, dict]] = {}
        self._lock = threading.Lock()
        if default is not None:
            self._models[""] = load_release(default, self.device)
        if not self._models and not self.roots:
            raise ValueError("give a released model (--model) or a models root (--models-root)")

    def _resolve(self, name: str) -> Path | None:
        rel = Path(name)
        if len(name) > MAX_NAME or rel.is_absolute() or ".." in rel.parts or "\x00" in name:
            raise KeyError(f"invalid model name (at most {MAX_NAME} characters, relative, no '..')")
        for root in self.roots:
            try:
                path = (root / rel).resolve()
                if path.is_relative_to(root) and (path / "release.json").is_file():
                    return path
            except (OSError, ValueError):
                continue
        return None

    def get(self, name: str) -> tuple[torch.nn.Module, dict]:
        with self._lock:
            if not name:
                if "" in self._models:
                    return self._models[""]
                raise KeyError("this service has no default model; name one")
            path = self._resolve(name)
            if path is None:
                raise KeyError(f"no released model named {name[:64]!r}")
            key = str(path)
            if key not in self._models:
                try:
                    self._models[key] = load_release(path, self.device)
                except (OSError, ValueError, KeyError) as err:
                    log.warning("release %s could not be loaded: %s", path, err)
                    raise KeyError(f"no usable released model named {name[:64]!r}") from None
                log.info("loaded released model %r from %s", name[:64], path)
            return self._models[key]


def caller_of(context) -> str:
    """Who is calling: the verified client certificate's name with TLS, else the peer's host
    (its port changes with every connection)."""
    auth = context.auth_context()
    names = auth.get("x509_common_name")
    if names:
        return "cert:" + names[0].decode(errors="replace")
    peer = context.peer() or ""
    return "host:" + peer.rsplit(":", 1)[0]


class InferenceServicer(pb_grpc.InferenceServicer):
    """``max_queries``: slices one caller may have predicted over the service's life (None: no
    limit); a caller over it gets RESOURCE_EXHAUSTED. ``queries`` counts what each caller used.
    ``calls_per_caller``: Predicts one caller may have in flight; the next is RESOURCE_EXHAUSTED."""

    def __init__(
        self,
        store: ModelStore,
        max_batch: int = MAX_BATCH,
        max_queries: int | None = None,
        calls_per_caller: int = CALLS_PER_CALLER,
    ) -> None:
        self.store, self.max_batch, self.max_queries = store, max_batch, max_queries
        self.calls_per_caller = calls_per_caller
        self._lock = threading.Lock()  # one forward pass at a time (CPU-bound anyway)
        self._calls_lock = threading.Lock()
        self._in_flight: dict[str, int] = {}
        self.queries: dict[str, int] = {}

    @contextlib.contextmanager
    def _call_slot(self, context):
        caller = caller_of(context)
        with self._calls_lock:
            n = self._in_flight.get(caller, 0)
            if n >= self.calls_per_caller:
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{n} calls of yours in flight: wait for one to finish",
                )
            self._in_flight[caller] = n + 1
        try:
            yield
        finally:
            with self._calls_lock:
                self._in_flight[caller] -= 1
                if not self._in_flight[caller]:
                    del self._in_flight[caller]

    def _charge(self, context, n: int) -> None:
        caller = caller_of(context)
        with self._lock:
            used = self.queries.get(caller, 0)
            if self.max_queries is not None and used + n > self.max_queries:
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"query budget spent: {used} of {self.max_queries} slices used",
                )
            self.queries[caller] = used + n

    def _model(self, name: str, context):
        try:
            return self.store.get(name)
        except KeyError as err:
            context.abort(grpc.StatusCode.NOT_FOUND, str(err.args[0]))

    def Describe(self, request, context):
        _, info = self._model(request.model, context)
        return pb.DescribeResponse(
            image_size=int(info["image_size"]), max_batch=self.max_batch, method=info["method"]
        )

    def Predict(self, request, context):
        with self._call_slot(context):
            return self._predict(request, context)

    def _predict(self, request, context):
        model, info = self._model(request.model, context)
        size = int(info["image_size"])
        # The header (dtype, shape) is checked before a byte is decoded: a refused batch costs no
        # more than its received bytes (issue 32: a 4,096-slice batch was decoded, then refused).
        t = request.images
        shape = tuple(t.shape[:4])
        if t.dtype != "int16" or len(t.shape) != 3 or shape[1:] != (size, size):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"images must be int16 HU of shape (N, {size}, {size}); "
                f"got {t.dtype[:16]!r} {shape}{'...' if len(t.shape) > 4 else ''}",
            )
        if shape[0] < 1:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "an empty batch: send 1 or more slices")
        if shape[0] > self.max_batch:
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"batch of {shape[0]} slices; send 1 to {self.max_batch} per request",
            )
        try:
            images = proto_to_ndarrays([t])[t.name]
        except ValueError as err:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        self._charge(context, len(images))
        with self._lock:
            probs = predict_hu(model, images, tuple(info["window"]), batch_size=self.max_batch)
        return pb.PredictResponse(probs=ndarrays_to_proto({"probs": probs})[0])


def request_limit(store: ModelStore, max_batch: int) -> int:
    """The largest legal Predict, refused by gRPC before any decoding beyond it: a full batch of
    int16 slices at the side of the model served (any released model's, up to ``MAX_SIDE``, when
    ``roots`` may name others), plus 64 KiB for names and framing."""
    side = MAX_SIDE if store.roots else int(store.get("")[1]["image_size"])
    return max_batch * side * side * 2 + (1 << 16)


def serve(
    model_dir: Path | None,
    address: str,
    port_file: Path | None = None,
    max_batch: int = MAX_BATCH,
    roots: list[Path] | None = None,
    exit_when: Path | None = None,
    max_queries: int | None = None,
    tls_dir: Path | None = None,
    client_certs: bool = False,
    device: torch.device | None = None,
) -> int:
    """Serve until SIGTERM (or until ``exit_when`` appears: the end of a compose campaign).

    ``tls_dir``: server-authenticated TLS. gRPC's Python API either requires a verified client
    certificate or never asks for one, so client certificates are all or nothing:
    ``client_certs`` requires a CA-signed one from every caller (mutual TLS), and the caller is then
    named by it for ``max_queries``; without it a caller is its host."""
    store = ModelStore(model_dir, roots, device)
    torch.set_num_threads(1)
    servicer = InferenceServicer(store, max_batch, max_queries)
    limit = request_limit(store, max_batch)
    creds = None
    if client_certs and tls_dir is None:
        raise ValueError("client certificates (--client-certs) need TLS: give --tls-dir")
    if tls_dir is not None:
        from common.wire.tls import server_credentials

        creds = server_credentials(tls_dir, require_client_auth=client_certs)
    server, port = create_server(
        address,
        [(pb_grpc.add_InferenceServicer_to_server, servicer)],
        max_receive_bytes=limit,
        credentials=creds,
        max_concurrent_rpcs=RELEASE_CONCURRENT_RPCS,
        options=RELEASE_SERVER_OPTIONS,
    )
    server.start()
    if port_file:
        port_file.write_text(str(port))
    log.info(
        "release service on port %d, %s (default model: %s; roots: %s; device %s)",
        port,
        ("mutual TLS" if client_certs else "TLS") if creds else "plaintext",
        model_dir,
        ", ".join(map(str, store.roots)) or "none",
        store.device,
    )
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            if exit_when is not None and exit_when.exists():
                log.info("%s appeared: the audit is over, stopping", exit_when)
                stop.wait(3.0)  # let the last caller go first
                break
    except KeyboardInterrupt:
        pass
    server.stop(grace=1.0)
    log.info("queries answered per caller: %s", servicer.queries)
    return 0


def run_release_cmd(args: ReleaseOptions) -> int:
    from common.device import resolve_device

    if not args.model and not args.models_root:
        raise ValueError("give --model RELEASE_DIR or --models-root DIR (or both)")
    if not args.tls_dir:  # as the server and the sites: plaintext beyond loopback is opt-in
        from common.wire.tls import plaintext_allowed

        plaintext_allowed(args.address, args.insecure, "release service")
    device = resolve_device(args.device)  # before anything starts: one line if there is no CUDA
    return serve(
        Path(args.model) if args.model else None,
        args.address,
        Path(args.port_file) if args.port_file else None,
        args.max_batch,
        [Path(r) for r in args.models_root or []],
        Path(args.exit_when) if args.exit_when else None,
        args.max_queries,
        Path(args.tls_dir) if args.tls_dir else None,
        args.client_certs,
        device,
    )
