"""The attacker's only access to a released model: ``Predict`` over gRPC.

``RemoteModel`` is a ``predict(images_hu) -> probs`` callable that batches to the service's
limit; it knows the service's public description (image size, batch limit, method) and nothing
else.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.wire.channel import create_channel
from common.wire.rpc import inference_pb2 as pb
from common.wire.rpc import inference_pb2_grpc as pb_grpc
from common.wire.serde import ndarrays_to_proto, proto_to_ndarrays


class RemoteModel:
    """``predict(images_hu) -> probs`` over gRPC, batching to the service's limit."""

    def __init__(self, address: str, model: str = "", timeout: float = 60.0,
                 tls_dir: Path | None = None) -> None:  # fmt: skip
        creds = None
        if tls_dir is not None:  # verify the service against the CA (client cert if present)
            from common.wire.tls import ca_channel_credentials

            creds = ca_channel_credentials(tls_dir)
        self.stub = pb_grpc.InferenceStub(create_channel(address, credentials=creds))
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
