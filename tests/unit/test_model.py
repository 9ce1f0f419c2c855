from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from common.model import (
    UNet,
    build_model,
    count_parameters,
    float_keys,
    get_params,
    norm_keys,
    set_params,
    state_sha256,
)


@pytest.mark.parametrize(("base", "expected"), [(16, 117_073), (52, 1_230_373)])
@pytest.mark.parametrize("norm", ["batch", "group"])
def test_parameter_counts(base: int, expected: int, norm: str) -> None:
    groups = 4  # divides 16 and 52
    assert count_parameters(UNet(base=base, norm=norm, groups=groups)) == expected


def test_forward_shape_and_input_check() -> None:
    model = build_model(base=4, seed=0).eval()
    assert model(torch.zeros(2, 1, 16, 20)).shape == (2, 1, 16, 20)
    with pytest.raises(ValueError, match="multiple of 4"):
        model(torch.zeros(1, 1, 18, 16))


def test_group_norm_needs_a_divisor() -> None:
    with pytest.raises(ValueError, match=r"groups=8.*Use groups in \[1, 2, 4, 13, 26, 52\]"):
        UNet(base=52, norm="group", groups=8)
    with pytest.raises(ValueError, match="unknown norm"):
        UNet(norm="layer")  # type: ignore[arg-type]


def test_same_seed_same_hash_regardless_of_global_rng() -> None:
    torch.manual_seed(123)
    a = build_model(base=8, seed=5)
    torch.manual_seed(999)
    _ = torch.rand(10)
    b = build_model(base=8, seed=5)
    c = build_model(base=8, seed=6)
    assert state_sha256(a.state_dict()) == state_sha256(b.state_dict())
    assert state_sha256(a.state_dict()) != state_sha256(c.state_dict())


def test_build_model_leaves_global_rng_alone() -> None:
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    build_model(base=4, seed=42)
    assert torch.equal(torch.rand(3), expected)


def test_hash_covers_values_names_dtype_and_shape() -> None:
    base = {"a": np.arange(4, dtype=np.float32)}
    h = state_sha256(base)
    assert state_sha256({"a": torch.arange(4, dtype=torch.float32)}) == h  # torch == numpy
    assert state_sha256({"b": base["a"]}) != h
    assert state_sha256({"a": base["a"].astype(np.float64)}) != h
    assert state_sha256({"a": base["a"].reshape(2, 2)}) != h
    changed = base["a"].copy()
    changed[3] = np.nextafter(changed[3], np.float32(10))
    assert state_sha256({"a": changed}) != h
    assert state_sha256({"x": base["a"], "y": base["a"]}) == state_sha256(
        {"y": base["a"], "x": base["a"]}
    )


def test_get_params_are_float_entries_incl_bn_buffers() -> None:
    model = build_model(base=4, seed=0)
    params = get_params(model)
    assert set(params) == set(float_keys(model))
    assert "enc1.1.running_mean" in params and "enc1.1.running_var" in params
    assert not any(k.endswith("num_batches_tracked") for k in params)
    assert all(v.dtype == np.float32 for v in params.values())


def test_get_set_round_trip_and_copies() -> None:
    src, dst = build_model(base=4, seed=1), build_model(base=4, seed=2)
    params = get_params(src)
    set_params(dst, params)
    assert state_sha256(get_params(dst)) == state_sha256(params)
    params["head.bias"][:] = 7.0  # get_params returns copies, not views
    assert float(src.head.bias.detach()[0]) != 7.0


def test_set_params_validation_and_subset() -> None:
    model = build_model(base=4, seed=1)
    params = get_params(model)
    with pytest.raises(ValueError, match="missing entries"):
        set_params(model, {"head.bias": params["head.bias"]})
    with pytest.raises(ValueError, match="not float state_dict entries"):
        set_params(model, {**params, "enc1.1.num_batches_tracked": np.zeros(())})
    with pytest.raises(ValueError, match="head.bias: shape"):
        set_params(model, {**params, "head.bias": np.zeros(2, np.float32)})
    set_params(model, {"head.bias": np.full(1, 3.0, np.float32)}, strict=False)
    assert float(model.head.bias.detach()[0]) == 3.0
    np.testing.assert_array_equal(get_params(model)["head.weight"], params["head.weight"])


class _Odd(nn.Module):
    """Normalisation layers under names that contain neither "bn" nor "norm"."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, bias=False)
        self.stage = nn.Sequential(nn.BatchNorm2d(4), nn.ReLU())
        self.x9 = nn.GroupNorm(2, 4)
        self.fc = nn.Linear(4, 2)
        self.tail = nn.LayerNorm(2)
        self.inst = nn.InstanceNorm2d(4, affine=True, track_running_stats=True)


def test_norm_keys_found_by_type_not_name() -> None:
    keys = norm_keys(_Odd())
    assert {
        "stage.0.weight",
        "stage.0.bias",
        "stage.0.running_mean",
        "stage.0.running_var",
        "stage.0.num_batches_tracked",
        "x9.weight",
        "x9.bias",
        "tail.weight",
        "tail.bias",
        "inst.weight",
        "inst.bias",
        "inst.running_mean",
        "inst.running_var",
        "inst.num_batches_tracked",
    } == keys


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_unet_norm_keys(norm: str) -> None:
    model = build_model(base=4, norm=norm, groups=2)
    keys = norm_keys(model)
    per_layer = 5 if norm == "batch" else 2
    assert len(keys) == 10 * per_layer  # 5 blocks x 2 norms
    assert not any(k.startswith(("head.", "up1.", "up2.")) for k in keys)
    assert "enc1.0.weight" not in keys  # a conv
