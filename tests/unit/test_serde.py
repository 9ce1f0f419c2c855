from __future__ import annotations

import numpy as np
import pytest

from common.wire import serde
from common.wire.rpc import types_pb2
from common.wire.serde import TensorFormatError, ndarrays_to_proto, proto_to_ndarrays, spec_of


def _sample(dtype: str, rng: np.random.Generator) -> np.ndarray:
    if dtype == "bool":
        return rng.random((3, 4)) > 0.5
    info = np.iinfo(dtype) if np.issubdtype(np.dtype(dtype), np.integer) else None
    if info is not None:
        return rng.integers(info.min, info.max, size=(3, 4), dtype=dtype, endpoint=True)
    return rng.standard_normal((3, 4)).astype(dtype)


@pytest.mark.parametrize("dtype", sorted(serde.DTYPES))
def test_round_trip_every_dtype(dtype: str) -> None:
    rng = np.random.default_rng(0)
    arrays = {"a": _sample(dtype, rng), "b.scalar": np.array(_sample(dtype, rng)[0, 0])}
    back = proto_to_ndarrays(ndarrays_to_proto(arrays), expected=spec_of(arrays))
    assert sorted(back) == ["a", "b.scalar"]
    for k, v in arrays.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        np.testing.assert_array_equal(back[k], v)
        assert back[k].flags.writeable and back[k].flags.c_contiguous


def test_wire_bytes_are_little_endian_and_c_order() -> None:
    big = np.arange(6, dtype=">i4").reshape(2, 3).T  # big-endian and Fortran-ordered view
    (t,) = ndarrays_to_proto({"x": big})
    assert t.dtype == "int32" and list(t.shape) == [3, 2]
    assert t.data == np.ascontiguousarray(big, dtype="<i4").tobytes()
    np.testing.assert_array_equal(proto_to_ndarrays([t])["x"], big)


def test_empty_and_zero_size_tensors() -> None:
    arrays = {"e": np.zeros((0, 5), np.float32)}
    back = proto_to_ndarrays(ndarrays_to_proto(arrays))
    assert back["e"].shape == (0, 5)


def _t(name="w", dtype="float32", shape=(2,), data=None) -> types_pb2.Tensor:
    if data is None:
        data = np.zeros(shape, dtype=dtype).tobytes()
    return types_pb2.Tensor(name=name, dtype=dtype, shape=list(shape), data=data)


@pytest.mark.parametrize(
    ("tensors", "match"),
    [
        ([_t(dtype="object", data=b"")], "'w'.*dtype 'object' is not allowed"),
        ([_t(dtype="complex64", data=b"\0" * 16)], "'w'.*not allowed"),
        ([_t(dtype="", data=b"")], "'w'.*not allowed"),
        ([_t(data=b"\0" * 7)], "'w'.*7 bytes.*needs 8"),
        ([_t(shape=(2, 2), data=b"\0" * 8)], "'w'.*8 bytes.*needs 16"),
        ([_t(shape=(-1,), data=b"")], "'w'.*negative dimension"),
        ([_t(), _t()], "'w'.*duplicate"),
        ([_t(name="")], "empty name"),
        ([_t(data=np.array([1.0, np.nan], np.float32).tobytes())], "'w'.*NaN/Inf"),
        ([_t(data=np.array([np.inf, 0], np.float32).tobytes())], "'w'.*NaN/Inf"),
    ],
)
def test_rejections(tensors: list, match: str) -> None:
    with pytest.raises(TensorFormatError, match=match) as err:
        proto_to_ndarrays(tensors)
    assert isinstance(err.value, ValueError)


def test_nonfinite_can_be_allowed_explicitly() -> None:
    t = _t(data=np.array([np.nan, 1], np.float32).tobytes())
    assert np.isnan(proto_to_ndarrays([t], allow_nonfinite=True)["w"][0])


def test_expected_spec_rejections() -> None:
    expected = {"w": ("float32", (2,)), "b": ("float32", (1,))}
    good = [_t(), _t(name="b", shape=(1,))]
    assert set(proto_to_ndarrays(good, expected)) == {"w", "b"}
    with pytest.raises(TensorFormatError, match=r"missing \['b'\], extra \[\]"):
        proto_to_ndarrays([_t()], expected)
    with pytest.raises(TensorFormatError, match=r"missing \[\], extra \['zzz'\]"):
        proto_to_ndarrays([*good, _t(name="zzz")], expected)
    with pytest.raises(TensorFormatError, match=r"'w'.*expected shape \(2,\), got \(1, 2\)"):
        proto_to_ndarrays([_t(shape=(1, 2)), good[1]], expected)
    with pytest.raises(TensorFormatError, match=r"'w'.*expected dtype float32, got float64"):
        proto_to_ndarrays([_t(dtype="float64"), good[1]], expected)


def test_encode_rejects_bad_input() -> None:
    with pytest.raises(TensorFormatError, match="'c'.*not allowed"):
        ndarrays_to_proto({"c": np.zeros(2, np.complex64)})
    with pytest.raises(TensorFormatError, match="'o'.*not allowed"):
        ndarrays_to_proto({"o": np.array([object()])})
    with pytest.raises(TensorFormatError, match="numpy array"):
        ndarrays_to_proto({"l": [1.0, 2.0]})  # type: ignore[dict-item]
    with pytest.raises(TensorFormatError, match="non-empty strings"):
        ndarrays_to_proto({"": np.zeros(1)})


def test_scalars_round_trip() -> None:
    values = {"lr": 0.001, "epochs": 2, "prox": True, "name": "fedprox", "np": np.float32(0.5)}
    back = serde.scalars_from_proto(serde.scalars_to_proto(values))
    assert back == {"lr": 0.001, "epochs": 2, "prox": True, "name": "fedprox", "np": 0.5}
    assert isinstance(back["epochs"], int) and isinstance(back["prox"], bool)
    with pytest.raises(ValueError, match="bool, int, float or str"):
        serde.scalar_to_proto([1])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no value"):
        serde.scalar_from_proto(types_pb2.Scalar())
