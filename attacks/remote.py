"""The attacker's only access to a released model: ``Predict`` over gRPC.

``RemoteModel`` is a ``predict(images_hu) -> probs`` callable that batches to the service's
limit; it knows the service's public description (image size, batch limit, method) and nothing
else.
"""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import numpy as np

from common.wire.channel import create_channel
from common.wire.rpc import inference_pb2 as pb
from common.wire.rpc import inference_pb2_grpc as pb_grpc
from common.wire.serde import ndarrays_to_proto, proto_to_ndarrays

log = logging.getLogger(__name__)


class ReleaseServiceError(ConnectionError):
    """A failed call to the release service, as one line (the CLI prints it instead of gRPC's
    traceback); ``code`` is the gRPC status (``grpc.StatusCode``), ``details`` its text."""

    def __init__(self, address: str, call: str, err: grpc.RpcError) -> None:
        self.code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
        self.details = err.details() if hasattr(err, "details") else str(err)
        hint = ""
        if self.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            hint = " — is `fedonco release serve` running there, and is --target right?"
        super().__init__(
            f"release service at {address}: {call} failed: {self.code.name}: {self.details}{hint}"
        )


class RemoteModel:
    """``predict(images_hu) -> probs`` over gRPC, batching to the service's limit. A service that
    does not answer ``Describe`` within ``connect_timeout`` seconds (default: ``timeout``; it may
    still be starting) or a failed call raises ``ReleaseServiceError`` naming the address and the
    status."""

    def __init__(
        self,
        address: str,
        model: str = "",
        timeout: float = 60.0,
        tls_dir: Path | None = None,
        connect_timeout: float | None = None,
    ) -> None:
        creds = None
        if tls_dir is not None:  # verify the service against the CA (client cert if present)
            from common.wire.tls import ca_channel_credentials

            creds = ca_channel_credentials(tls_dir)
        self.stub = pb_grpc.InferenceStub(create_channel(address, credentials=creds))
        self.address, self.timeout, self.model = address, timeout, model
        connect_timeout = timeout if connect_timeout is None else connect_timeout
        log.info("connecting to the release service at %s (up to %.0f s)", address, connect_timeout)
        try:
            d = self.stub.Describe(
                pb.DescribeRequest(model=model), timeout=connect_timeout, wait_for_ready=True
            )
        except grpc.RpcError as err:
            raise ReleaseServiceError(address, "Describe", err) from None
        self.image_size, self.max_batch, self.method = d.image_size, d.max_batch, d.method

    def predict(self, images: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(images), self.max_batch):
            chunk = np.ascontiguousarray(images[i : i + self.max_batch], dtype=np.int16)
            req = pb.PredictRequest(
                images=ndarrays_to_proto({"images": chunk})[0], model=self.model
            )
            try:
                resp = self.stub.Predict(req, timeout=self.timeout, wait_for_ready=True)
            except grpc.RpcError as err:
                raise ReleaseServiceError(self.address, "Predict", err) from None
            out.append(proto_to_ndarrays([resp.probs])["probs"])
        return (
            np.concatenate(out)
            if out
            else np.zeros((0, self.image_size, self.image_size), np.float32)
        )
