from common.wire.rpc import types_pb2 as _types_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PredictRequest(_message.Message):
    __slots__ = ("images", "model")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    images: _types_pb2.Tensor
    model: str
    def __init__(self, images: _Optional[_Union[_types_pb2.Tensor, _Mapping]] = ..., model: _Optional[str] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("probs",)
    PROBS_FIELD_NUMBER: _ClassVar[int]
    probs: _types_pb2.Tensor
    def __init__(self, probs: _Optional[_Union[_types_pb2.Tensor, _Mapping]] = ...) -> None: ...

class DescribeRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class DescribeResponse(_message.Message):
    __slots__ = ("image_size", "max_batch", "method")
    IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    image_size: int
    max_batch: int
    method: str
    def __init__(self, image_size: _Optional[int] = ..., max_batch: _Optional[int] = ..., method: _Optional[str] = ...) -> None: ...
