from common.wire.rpc import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterSiteRequest(_message.Message):
    __slots__ = ("site_id", "info")
    class InfoEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _types_pb2.Scalar
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_types_pb2.Scalar, _Mapping]] = ...) -> None: ...
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    info: _containers.MessageMap[str, _types_pb2.Scalar]
    def __init__(self, site_id: _Optional[str] = ..., info: _Optional[_Mapping[str, _types_pb2.Scalar]] = ...) -> None: ...

class RegisterSiteResponse(_message.Message):
    __slots__ = ("run_id", "heartbeat_interval_s", "info")
    class InfoEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _types_pb2.Scalar
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_types_pb2.Scalar, _Mapping]] = ...) -> None: ...
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    heartbeat_interval_s: float
    info: _containers.MessageMap[str, _types_pb2.Scalar]
    def __init__(self, run_id: _Optional[str] = ..., heartbeat_interval_s: _Optional[float] = ..., info: _Optional[_Mapping[str, _types_pb2.Scalar]] = ...) -> None: ...

class PullTaskRequest(_message.Message):
    __slots__ = ("site_id", "run_id", "round")
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    run_id: str
    round: int
    def __init__(self, site_id: _Optional[str] = ..., run_id: _Optional[str] = ..., round: _Optional[int] = ...) -> None: ...

class PullTaskResponse(_message.Message):
    __slots__ = ("run_id", "fit", "evaluate", "wait", "finished", "secagg")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    FIT_FIELD_NUMBER: _ClassVar[int]
    EVALUATE_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    SECAGG_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    fit: FitTask
    evaluate: EvaluateTask
    wait: WaitTask
    finished: FinishedTask
    secagg: SecAggTask
    def __init__(self, run_id: _Optional[str] = ..., fit: _Optional[_Union[FitTask, _Mapping]] = ..., evaluate: _Optional[_Union[EvaluateTask, _Mapping]] = ..., wait: _Optional[_Union[WaitTask, _Mapping]] = ..., finished: _Optional[_Union[FinishedTask, _Mapping]] = ..., secagg: _Optional[_Union[SecAggTask, _Mapping]] = ...) -> None: ...

class FitTask(_message.Message):
    __slots__ = ("round", "tensors", "config", "deadline_s")
    class ConfigEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _types_pb2.Scalar
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_types_pb2.Scalar, _Mapping]] = ...) -> None: ...
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_S_FIELD_NUMBER: _ClassVar[int]
    round: int
    tensors: _containers.RepeatedCompositeFieldContainer[_types_pb2.Tensor]
    config: _containers.MessageMap[str, _types_pb2.Scalar]
    deadline_s: float
    def __init__(self, round: _Optional[int] = ..., tensors: _Optional[_Iterable[_Union[_types_pb2.Tensor, _Mapping]]] = ..., config: _Optional[_Mapping[str, _types_pb2.Scalar]] = ..., deadline_s: _Optional[float] = ...) -> None: ...

class EvaluateTask(_message.Message):
    __slots__ = ("round", "tensors", "config")
    class ConfigEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _types_pb2.Scalar
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_types_pb2.Scalar, _Mapping]] = ...) -> None: ...
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    round: int
    tensors: _containers.RepeatedCompositeFieldContainer[_types_pb2.Tensor]
    config: _containers.MessageMap[str, _types_pb2.Scalar]
    def __init__(self, round: _Optional[int] = ..., tensors: _Optional[_Iterable[_Union[_types_pb2.Tensor, _Mapping]]] = ..., config: _Optional[_Mapping[str, _types_pb2.Scalar]] = ...) -> None: ...

class WaitTask(_message.Message):
    __slots__ = ("retry_after_s", "reason")
    RETRY_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    retry_after_s: float
    reason: str
    def __init__(self, retry_after_s: _Optional[float] = ..., reason: _Optional[str] = ...) -> None: ...

class FinishedTask(_message.Message):
    __slots__ = ("rounds_completed", "reason")
    ROUNDS_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    rounds_completed: int
    reason: str
    def __init__(self, rounds_completed: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class PushUpdateRequest(_message.Message):
    __slots__ = ("site_id", "run_id", "round", "tensors", "num_examples", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _types_pb2.Scalar
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_types_pb2.Scalar, _Mapping]] = ...) -> None: ...
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    run_id: str
    round: int
    tensors: _containers.RepeatedCompositeFieldContainer[_types_pb2.Tensor]
    num_examples: int
    metrics: _containers.MessageMap[str, _types_pb2.Scalar]
    def __init__(self, site_id: _Optional[str] = ..., run_id: _Optional[str] = ..., round: _Optional[int] = ..., tensors: _Optional[_Iterable[_Union[_types_pb2.Tensor, _Mapping]]] = ..., num_examples: _Optional[int] = ..., metrics: _Optional[_Mapping[str, _types_pb2.Scalar]] = ...) -> None: ...

class PushUpdateResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PushEvaluationRequest(_message.Message):
    __slots__ = ("site_id", "run_id", "round", "num_examples", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _types_pb2.Scalar
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_types_pb2.Scalar, _Mapping]] = ...) -> None: ...
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    run_id: str
    round: int
    num_examples: int
    metrics: _containers.MessageMap[str, _types_pb2.Scalar]
    def __init__(self, site_id: _Optional[str] = ..., run_id: _Optional[str] = ..., round: _Optional[int] = ..., num_examples: _Optional[int] = ..., metrics: _Optional[_Mapping[str, _types_pb2.Scalar]] = ...) -> None: ...

class PushEvaluationResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeclineRequest(_message.Message):
    __slots__ = ("site_id", "run_id", "round", "reason")
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    run_id: str
    round: int
    reason: str
    def __init__(self, site_id: _Optional[str] = ..., run_id: _Optional[str] = ..., round: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class DeclineResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("site_id", "run_id", "round")
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    run_id: str
    round: int
    def __init__(self, site_id: _Optional[str] = ..., run_id: _Optional[str] = ..., round: _Optional[int] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("run_active", "heartbeat_interval_s")
    RUN_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    run_active: bool
    heartbeat_interval_s: float
    def __init__(self, run_active: _Optional[bool] = ..., heartbeat_interval_s: _Optional[float] = ...) -> None: ...

class PublicKeys(_message.Message):
    __slots__ = ("enc_pk", "mask_pk", "signature", "certificate")
    ENC_PK_FIELD_NUMBER: _ClassVar[int]
    MASK_PK_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    enc_pk: bytes
    mask_pk: bytes
    signature: bytes
    certificate: bytes
    def __init__(self, enc_pk: _Optional[bytes] = ..., mask_pk: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., certificate: _Optional[bytes] = ...) -> None: ...

class SecAggTask(_message.Message):
    __slots__ = ("round", "share_keys", "masked_input", "unmask", "consistency")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SHARE_KEYS_FIELD_NUMBER: _ClassVar[int]
    MASKED_INPUT_FIELD_NUMBER: _ClassVar[int]
    UNMASK_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    round: int
    share_keys: ShareKeysStage
    masked_input: MaskedInputStage
    unmask: UnmaskStage
    consistency: ConsistencyStage
    def __init__(self, round: _Optional[int] = ..., share_keys: _Optional[_Union[ShareKeysStage, _Mapping]] = ..., masked_input: _Optional[_Union[MaskedInputStage, _Mapping]] = ..., unmask: _Optional[_Union[UnmaskStage, _Mapping]] = ..., consistency: _Optional[_Union[ConsistencyStage, _Mapping]] = ...) -> None: ...

class ShareKeysStage(_message.Message):
    __slots__ = ("public_keys", "threshold", "neighbours")
    class PublicKeysEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: PublicKeys
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[PublicKeys, _Mapping]] = ...) -> None: ...
    PUBLIC_KEYS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    NEIGHBOURS_FIELD_NUMBER: _ClassVar[int]
    public_keys: _containers.MessageMap[str, PublicKeys]
    threshold: int
    neighbours: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, public_keys: _Optional[_Mapping[str, PublicKeys]] = ..., threshold: _Optional[int] = ..., neighbours: _Optional[_Iterable[str]] = ...) -> None: ...

class MaskedInputStage(_message.Message):
    __slots__ = ("ciphertexts", "scale", "clip")
    class CiphertextsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    CIPHERTEXTS_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    CLIP_FIELD_NUMBER: _ClassVar[int]
    ciphertexts: _containers.ScalarMap[str, bytes]
    scale: float
    clip: float
    def __init__(self, ciphertexts: _Optional[_Mapping[str, bytes]] = ..., scale: _Optional[float] = ..., clip: _Optional[float] = ...) -> None: ...

class ConsistencyStage(_message.Message):
    __slots__ = ("survivors",)
    SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    survivors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, survivors: _Optional[_Iterable[str]] = ...) -> None: ...

class UnmaskStage(_message.Message):
    __slots__ = ("survivors", "dropped", "confirmations")
    class ConfirmationsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    CONFIRMATIONS_FIELD_NUMBER: _ClassVar[int]
    survivors: _containers.RepeatedScalarFieldContainer[str]
    dropped: _containers.RepeatedScalarFieldContainer[str]
    confirmations: _containers.ScalarMap[str, bytes]
    def __init__(self, survivors: _Optional[_Iterable[str]] = ..., dropped: _Optional[_Iterable[str]] = ..., confirmations: _Optional[_Mapping[str, bytes]] = ...) -> None: ...

class AdvertiseKeysRequest(_message.Message):
    __slots__ = ("site_id", "run_id", "round", "keys", "num_examples", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _types_pb2.Scalar
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_types_pb2.Scalar, _Mapping]] = ...) -> None: ...
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    run_id: str
    round: int
    keys: PublicKeys
    num_examples: int
    metrics: _containers.MessageMap[str, _types_pb2.Scalar]
    def __init__(self, site_id: _Optional[str] = ..., run_id: _Optional[str] = ..., round: _Optional[int] = ..., keys: _Optional[_Union[PublicKeys, _Mapping]] = ..., num_examples: _Optional[int] = ..., metrics: _Optional[_Mapping[str, _types_pb2.Scalar]] = ...) -> None: ...

class ShareKeysRequest(_message.Message):
    __slots__ = ("site_id", "run_id", "round", "ciphertexts")
    class CiphertextsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXTS_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    run_id: str
    round: int
    ciphertexts: _containers.ScalarMap[str, bytes]
    def __init__(self, site_id: _Optional[str] = ..., run_id: _Optional[str] = ..., round: _Optional[int] = ..., ciphertexts: _Optional[_Mapping[str, bytes]] = ...) -> None: ...

class PushMaskedInputRequest(_message.Message):
    __slots__ = ("site_id", "run_id", "round", "masked", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _types_pb2.Scalar
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_types_pb2.Scalar, _Mapping]] = ...) -> None: ...
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    MASKED_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    run_id: str
    round: int
    masked: _types_pb2.Tensor
    metrics: _containers.MessageMap[str, _types_pb2.Scalar]
    def __init__(self, site_id: _Optional[str] = ..., run_id: _Optional[str] = ..., round: _Optional[int] = ..., masked: _Optional[_Union[_types_pb2.Tensor, _Mapping]] = ..., metrics: _Optional[_Mapping[str, _types_pb2.Scalar]] = ...) -> None: ...

class ConfirmRequest(_message.Message):
    __slots__ = ("site_id", "run_id", "round", "tags")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    run_id: str
    round: int
    tags: _containers.ScalarMap[str, bytes]
    def __init__(self, site_id: _Optional[str] = ..., run_id: _Optional[str] = ..., round: _Optional[int] = ..., tags: _Optional[_Mapping[str, bytes]] = ...) -> None: ...

class UnmaskRequest(_message.Message):
    __slots__ = ("site_id", "run_id", "round", "shares")
    class SharesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    run_id: str
    round: int
    shares: _containers.ScalarMap[str, bytes]
    def __init__(self, site_id: _Optional[str] = ..., run_id: _Optional[str] = ..., round: _Optional[int] = ..., shares: _Optional[_Mapping[str, bytes]] = ...) -> None: ...

class SecAggResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
