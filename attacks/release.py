"""The release service: the final model behind the ``Inference`` gRPC service.

``export_release`` (called by the server at the end of a run) writes ``release/model.npz`` and
``release/release.json`` (architecture and input facts, no data). ``fedonco release serve`` loads
them and answers ``Predict`` with per-pixel probabilities; inputs are validated (dtype, shape,
batch size) and nothing but probabilities ever leaves. ``RemoteModel`` is the caller's side: a
``predict(images_hu) -> probs`` callable over gRPC, the attacker's only access to the model.
"""

from __future__ import annotations

import io
import json
import logging
import signal
import threading
from pathlib import Path

import grpc
import numpy as np
import torch

from common.data.loader import window_hu
from common.data.store import npz_bytes
from common.grpc_options import create_channel, create_server
from common.model import build_model, set_params
from common.rpc import inference_pb2 as pb
from common.rpc import inference_pb2_grpc as pb_grpc
from common.serde import ndarrays_to_proto, proto_to_ndarrays

log = logging.getLogger(__name__)
MAX_BATCH = 64


def export_release(out: Path, params: dict[str, np.ndarray], info: dict) -> None:
    """Write the released model: weights (.npz, no pickle) and its public description."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.npz").write_bytes(npz_bytes(params))
    (out / "release.json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")


def load_release(path: Path) -> tuple[torch.nn.Module, dict]:
    path = Path(path)
    info_file = path / "release.json"
    if not info_file.is_file():
        raise FileNotFoundError(f"{path}: no release.json (export one with a finished server run)")
    info = json.loads(info_file.read_text())
    with np.load(io.BytesIO((path / "model.npz").read_bytes()), allow_pickle=False) as z:
        params = {k: z[k] for k in z.files}
    model = build_model(info["base"], info["norm"], info["groups"], seed=0)
    set_params(model, params)
    model.eval()
    return model, info


class ModelStore:
    """Released models by name: ``default`` answers the empty name; a name is a path relative to
    one of ``roots`` (e.g. ``<campaign>/fedavg/release`` or ``<run_id>/siteA``), loaded on first
    use and kept. Names are checked: no absolute paths, no ``..``."""

    def __init__(self, default: Path | None = None, roots: list[Path] | None = None) -> None:
        self.roots = [Path(r).resolve() for r in roots or []]
        self._models: dict[str, tuple[torch.nn.Module, dict]] = {}
        self._lock = threading.Lock()
        if default is not None:
            self._models[""] = load_release(default)
        if not self._models and not self.roots:
            raise ValueError("give a released model (--model) or a models root (--models-root)")

    def get(self, name: str) -> tuple[torch.nn.Module, dict]:
        with self._lock:
            if name in self._models:
                return self._models[name]
            if not name:
                raise KeyError("this service has no default model; name one")
            rel = Path(name)
            if rel.is_absolute() or ".." in rel.parts:
                raise KeyError(f"invalid model name {name!r}")
            for root in self.roots:
                if (root / rel / "release.json").is_file():
                    self._models[name] = load_release(root / rel)
                    log.info("loaded released model %r from %s", name, root / rel)
                    return self._models[name]
            raise KeyError(f"no released model named {name!r}")


class InferenceServicer(pb_grpc.InferenceServicer):
    def __init__(self, store: ModelStore, max_batch: int = MAX_BATCH) -> None:
        self.store, self.max_batch = store, max_batch
        self._lock = threading.Lock()  # one forward pass at a time (CPU-bound anyway)

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
        model, info = self._model(request.model, context)
        size = int(info["image_size"])
        try:
            images = proto_to_ndarrays([request.images])[request.images.name]
        except ValueError as err:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        if images.dtype != np.int16 or images.ndim != 3 or images.shape[1:] != (size, size):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"images must be int16 HU of shape (N, {size}, {size}); "
                f"got {images.dtype} {images.shape}",
            )
        if not 1 <= len(images) <= self.max_batch:
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"batch of {len(images)} slices; send 1 to {self.max_batch} per request",
            )
        x = torch.from_numpy(window_hu(images, tuple(info["window"]))).unsqueeze(1)
        with self._lock, torch.no_grad():
            probs = torch.sigmoid(model(x))[:, 0].numpy().astype(np.float32)
        return pb.PredictResponse(probs=ndarrays_to_proto({"probs": probs})[0])


class RemoteModel:
    """``predict(images_hu) -> probs`` over gRPC, batching to the service's limit."""

    def __init__(self, address: str, model: str = "", timeout: float = 60.0) -> None:
        self.stub = pb_grpc.InferenceStub(create_channel(address))
        self.timeout, self.model = timeout, model
        d = self.stub.Describe(
            pb.DescribeRequest(model=model), timeout=timeout, wait_for_ready=True
        )
        self.image_size, self.max_batch, self.method = d.image_size, d.max_batch, d.method

    def predict(self, images: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(images), self.max_batch):
            chunk = np.ascontiguousarray(images[i : i + self.max_batch], dtype=np.int16)
            req = pb.PredictRequest(
                images=ndarrays_to_proto({"images": chunk})[0], model=self.model
            )
            resp = self.stub.Predict(req, timeout=self.timeout, wait_for_ready=True)
            out.append(proto_to_ndarrays([resp.probs])["probs"])
        return (
            np.concatenate(out)
            if out
            else np.zeros((0, self.image_size, self.image_size), np.float32)
        )


def serve(model_dir: Path | None, address: str, port_file: Path | None = None,
          max_batch: int = MAX_BATCH, roots: list[Path] | None = None,
          exit_when: Path | None = None) -> int:  # fmt: skip
    """Serve until SIGTERM (or until ``exit_when`` appears: the end of a compose campaign)."""
    store = ModelStore(model_dir, roots)
    torch.set_num_threads(1)
    servicer = InferenceServicer(store, max_batch)
    server, port = create_server(address, [(pb_grpc.add_InferenceServicer_to_server, servicer)])
    server.start()
    if port_file:
        port_file.write_text(str(port))
    log.info("release service on port %d (default model: %s; roots: %s)", port, model_dir,
             ", ".join(map(str, store.roots)) or "none")  # fmt: skip
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
    return 0


def run_release_cmd(args) -> int:
    if not args.model and not args.models_root:
        raise ValueError("give --model RELEASE_DIR or --models-root DIR (or both)")
    return serve(
        Path(args.model) if args.model else None,
        args.address,
        Path(args.port_file) if args.port_file else None,
        args.max_batch,
        [Path(r) for r in args.models_root or []],
        Path(args.exit_when) if args.exit_when else None,
    )
