"""The only module that converts tensors and scalars to and from protobuf messages.

Wire format of a tensor (``fedonco.v1.Tensor``): name, numpy dtype name from ``DTYPES``, shape, and
the raw **little-endian** C-order bytes. Nothing is ever pickled and nothing from the network is
ever passed to ``torch.load``: decoding is ``np.frombuffer`` with an explicit dtype, after the byte
length has been checked against the shape.

Every decoding problem raises ``TensorFormatError`` (a ``ValueError``) whose message names the
tensor, so a gRPC servicer can return it as INVALID_ARGUMENT unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

from common.wire.rpc import types_pb2

Tensor = types_pb2.Tensor
Scalar = types_pb2.Scalar
ScalarValue = bool | int | float | str
# name -> (dtype, shape): what a receiver expects, e.g. built with spec_of(global_params)
TensorSpec = Mapping[str, tuple[str | np.dtype, tuple[int, ...]]]

# Explicit whitelist. No object, complex, datetime or void dtypes: they are either not plain
# numbers or could smuggle structure. bfloat16 is not a numpy dtype; send float32 instead.
DTYPES: frozenset[str] = frozenset(
    {
        "bool",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "int8",
        "int16",
        "int32",
        "int64",
        "float16",
        "float32",
        "float64",
    }
)


class TensorFormatError(ValueError):
    """A tensor cannot be encoded or decoded, or does not match what the receiver expects."""

    def __init__(self, message: str, name: str | None = None) -> None:
        super().__init__(message if name is None else f"tensor {name!r}: {message}")
        self.tensor_name = name


def _wire_dtype(dtype: str | np.dtype, name: str | None) -> np.dtype:
    """The little-endian numpy dtype for a whitelisted dtype name."""
    dtype_name = np.dtype(dtype).name if isinstance(dtype, np.dtype) else str(dtype)
    if dtype_name not in DTYPES:
        raise TensorFormatError(
            f"dtype {dtype_name!r} is not allowed on the wire; allowed: {sorted(DTYPES)}", name
        )
    return np.dtype(dtype_name).newbyteorder("<")


# ----------------------------------------------------------------------------------------------
# tensors
# ----------------------------------------------------------------------------------------------


def ndarrays_to_proto(arrays: Mapping[str, np.ndarray]) -> list[Tensor]:
    """Encode named numpy arrays as ``Tensor`` messages, in sorted name order."""
    out = []
    for name in sorted(arrays):
        if not isinstance(name, str) or not name:
            raise TensorFormatError(f"tensor names must be non-empty strings, got {name!r}")
        arr = arrays[name]
        if not isinstance(arr, np.ndarray):
            raise TensorFormatError(f"expected a numpy array, got {type(arr).__name__}", name)
        wire = _wire_dtype(arr.dtype, name)
        data = np.ascontiguousarray(arr, dtype=wire).tobytes()
        out.append(Tensor(name=name, dtype=wire.name, shape=list(arr.shape), data=data))
    return out


def _decode_one(t: Tensor) -> np.ndarray:
    name = t.name
    wire = _wire_dtype(t.dtype, name)
    shape = tuple(int(d) for d in t.shape)
    if any(d < 0 for d in shape):
        raise TensorFormatError(f"negative dimension in shape {shape}", name)
    expected_bytes = math.prod(shape) * wire.itemsize
    if len(t.data) != expected_bytes:
        raise TensorFormatError(
            f"{len(t.data)} bytes of data, but shape {shape} of {wire.name} needs {expected_bytes}",
            name,
        )
    # frombuffer reads the bytes as little-endian; astype makes a native, owned, writable copy.
    return np.frombuffer(t.data, dtype=wire).reshape(shape).astype(wire.newbyteorder("="))


def proto_to_ndarrays(
    tensors: Iterable[Tensor],
    expected: TensorSpec | None = None,
    *,
    allow_nonfinite: bool = False,
) -> dict[str, np.ndarray]:
    """Decode ``Tensor`` messages into a name -> array dict, validating everything.

    Always rejected: an empty or duplicate name, a dtype outside ``DTYPES``, a negative dimension,
    a byte length that does not match the shape, and (unless ``allow_nonfinite``) NaN or Inf in a
    float tensor. With ``expected`` (name -> (dtype, shape)), also rejected: a missing or extra
    name, and a dtype or shape different from the expected one.
    """
    arrays: dict[str, np.ndarray] = {}
    for t in tensors:
        if not t.name:
            raise TensorFormatError("a tensor has an empty name")
        if t.name in arrays:
            raise TensorFormatError("duplicate name", t.name)
        arrays[t.name] = _decode_one(t)

    if expected is not None:
        missing = sorted(set(expected) - set(arrays))
        extra = sorted(set(arrays) - set(expected))
        if missing or extra:
            raise TensorFormatError(f"tensor names do not match: missing {missing}, extra {extra}")
        for name, (dtype, shape) in expected.items():
            want = np.dtype(dtype)
            got = arrays[name]
            if got.dtype != want:
                raise TensorFormatError(f"expected dtype {want.name}, got {got.dtype.name}", name)
            if got.shape != tuple(shape):
                raise TensorFormatError(
                    f"expected shape {tuple(shape)}, got {tuple(got.shape)}", name
                )

    if not allow_nonfinite:
        for name, arr in arrays.items():
            if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
                bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
                raise TensorFormatError(f"{bad} NaN/Inf value(s) in a float tensor", name)
    return arrays


def spec_of(arrays: Mapping[str, np.ndarray]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (dtype name, shape) of ``arrays``: the ``expected`` argument of a receiver."""
    return {name: (arr.dtype.name, tuple(arr.shape)) for name, arr in arrays.items()}


def tensors_nbytes(tensors: Iterable[Tensor]) -> int:
    """Payload bytes of encoded tensors (for the bytes-on-the-wire metrics)."""
    return sum(len(t.data) for t in tensors)


# ----------------------------------------------------------------------------------------------
# scalars (config and metrics maps)
# ----------------------------------------------------------------------------------------------


def scalar_to_proto(value: ScalarValue) -> Scalar:
    """Encode a bool, int, float or str (numpy scalars included) as a ``Scalar``."""
    if isinstance(value, bool | np.bool_):
        return Scalar(bool_value=bool(value))
    if isinstance(value, int | np.integer):
        return Scalar(int_value=int(value))
    if isinstance(value, float | np.floating):
        return Scalar(float_value=float(value))
    if isinstance(value, str):
        return Scalar(string_value=value)
    raise ValueError(f"a scalar must be bool, int, float or str, got {type(value).__name__}")


def scalar_from_proto(scalar: Scalar) -> ScalarValue:
    kind = scalar.WhichOneof("value")
    if kind is None:
        raise ValueError("a Scalar message has no value set")
    return getattr(scalar, kind)


def scalars_to_proto(values: Mapping[str, ScalarValue]) -> dict[str, Scalar]:
    """Encode a config or metrics dict; usable directly as a map field in a message constructor."""
    return {str(k): scalar_to_proto(v) for k, v in values.items()}


def scalars_from_proto(values: Mapping[str, Scalar]) -> dict[str, ScalarValue]:
    return {k: scalar_from_proto(v) for k, v in sorted(values.items())}
