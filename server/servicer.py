"""The Federation gRPC servicer: decode -> validate -> hand to the round state -> encode.

No ML here. Tensors are decoded by ``common.serde`` against the spec of what the site was sent,
so wrong names, shapes, dtypes, NaN/Inf are rejected before anything is stored.
"""

from __future__ import annotations

import logging

import grpc

from common.rpc import federation_pb2 as pb
from common.rpc import federation_pb2_grpc as pb_grpc
from common.serde import proto_to_ndarrays, scalars_from_proto, scalars_to_proto
from server.state import Rejected, RoundState, Task

log = logging.getLogger(__name__)

STATUS = {
    "not_found": grpc.StatusCode.NOT_FOUND,
    "failed_precondition": grpc.StatusCode.FAILED_PRECONDITION,
    "already_exists": grpc.StatusCode.ALREADY_EXISTS,
    "invalid_argument": grpc.StatusCode.INVALID_ARGUMENT,
}
LONG_POLL_S = 1.0  # PullTask waits this long for a task before answering "wait"


class FederationServicer(pb_grpc.FederationServicer):
    def __init__(self, state: RoundState, run_info: dict) -> None:
        self.state = state
        self.run_info = run_info

    def _call(self, context, fn, *args):
        try:
            return fn(*args)
        except Rejected as err:
            context.abort(STATUS[err.kind], str(err))

    def RegisterSite(self, request, context):
        self._call(context, self.state.register, request.site_id)
        return pb.RegisterSiteResponse(
            run_id=self.state.run_id,
            heartbeat_interval_s=self.state.heartbeat_s,
            info=scalars_to_proto(self.run_info),
        )

    def Heartbeat(self, request, context):
        active = self._call(context, self.state.heartbeat, request.site_id, request.run_id)
        return pb.HeartbeatResponse(run_active=active, heartbeat_interval_s=self.state.heartbeat_s)

    def PullTask(self, request, context):
        task: Task = self._call(
            context, self.state.next_task, request.site_id, request.run_id, LONG_POLL_S
        )
        resp = pb.PullTaskResponse(run_id=self.state.run_id)
        if task.kind == "fit":
            resp.fit.CopyFrom(
                pb.FitTask(
                    round=task.round,
                    tensors=task.payload,
                    config=scalars_to_proto(task.config),
                    deadline_s=task.deadline_s,
                )
            )
        elif task.kind == "evaluate":
            resp.evaluate.CopyFrom(
                pb.EvaluateTask(
                    round=task.round, tensors=task.payload, config=scalars_to_proto(task.config)
                )
            )
        elif task.kind == "finished":
            resp.finished.CopyFrom(pb.FinishedTask(rounds_completed=task.round, reason=task.reason))
        else:
            resp.wait.CopyFrom(pb.WaitTask(retry_after_s=0.0, reason=task.reason))
        return resp

    def PushUpdate(self, request, context):
        def decode(spec):
            if request.num_examples <= 0:
                raise ValueError(f"num_examples must be positive, got {request.num_examples}")
            arrays = proto_to_ndarrays(request.tensors, spec)
            return arrays, int(request.num_examples), scalars_from_proto(request.metrics)

        self._call(
            context,
            self.state.submit,
            "fit",
            request.site_id,
            request.run_id,
            request.round,
            decode,
        )
        return pb.PushUpdateResponse()

    def PushEvaluation(self, request, context):
        def decode(_spec):
            return int(request.num_examples), scalars_from_proto(request.metrics)

        self._call(
            context,
            self.state.submit,
            "evaluate",
            request.site_id,
            request.run_id,
            request.round,
            decode,
        )
        return pb.PushEvaluationResponse()
