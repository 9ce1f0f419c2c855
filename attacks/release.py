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


class InferenceServicer(pb_grpc.InferenceServicer):
    def __init__(self, model: torch.nn.Module, info: dict, max_batch: int = MAX_BATCH) -> None:
        self.model, self.info, self.max_batch = model, info, max_batch
        self.size = int(info["image_size"])
        self.window = tuple(info["window"])
        self._lock = threading.Lock()  # one forward pass at a time (CPU-bound anyway)

    def Describe(self, request, context):
        return pb.DescribeResponse(
            image_size=self.size, max_batch=self.max_batch, method=self.info["method"]
        )

    def Predict(self, request, context):
        try:
            images = proto_to_ndarrays([request.images])[request.images.name]
        except ValueError as err:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        if (
            images.dtype != np.int16
            or images.ndim != 3
            or images.shape[1:] != (self.size, self.size)
        ):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"images must be int16 HU of shape (N, {self.size}, {self.size}); "
                f"got {images.dtype} {images.shape}",
            )
        if not 1 <= len(images) <= self.max_batch:
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"batch of {len(images)} slices; send 1 to {self.max_batch} per request",
            )
        x = torch.from_numpy(window_hu(images, self.window)).unsqueeze(1)
        with self._lock, torch.no_grad():
            probs = torch.sigmoid(self.model(x))[:, 0].numpy().astype(np.float32)
        return pb.PredictResponse(probs=ndarrays_to_proto({"probs": probs})[0])


class RemoteModel:
    """``predict(images_hu) -> probs`` over gRPC, batching to the service's limit."""

    def __init__(self, address: str, timeout: float = 60.0) -> None:
        self.stub = pb_grpc.InferenceStub(create_channel(address))
        self.timeout = timeout
        d = self.stub.Describe(pb.DescribeRequest(), timeout=timeout, wait_for_ready=True)
        self.image_size, self.max_batch, self.method = d.image_size, d.max_batch, d.method

    def predict(self, images: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(images), self.max_batch):
            chunk = np.ascontiguousarray(images[i : i + self.max_batch], dtype=np.int16)
            req = pb.PredictRequest(images=ndarrays_to_proto({"images": chunk})[0])
            resp = self.stub.Predict(req, timeout=self.timeout, wait_for_ready=True)
            out.append(proto_to_ndarrays([resp.probs])["probs"])
        return (
            np.concatenate(out)
            if out
            else np.zeros((0, self.image_size, self.image_size), np.float32)
        )


def serve(model_dir: Path, address: str, port_file: Path | None = None, max_batch: int = MAX_BATCH):
    model, info = load_release(model_dir)
    torch.set_num_threads(1)
    servicer = InferenceServicer(model, info, max_batch)
    server, port = create_server(address, [(pb_grpc.add_InferenceServicer_to_server, servicer)])
    server.start()
    if port_file:
        port_file.write_text(str(port))
    log.info("release service for %s (%s) on port %d", model_dir, info["method"], port)
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    server.stop(grace=1.0)
    return 0


def run_release_cmd(args) -> int:
    return serve(
        Path(args.model),
        args.address,
        Path(args.port_file) if args.port_file else None,
        args.max_batch,
    )
