"""The paper's 2D U-Net and the helpers that move its weights in and out as numpy.

Architecture: two down-blocks, a bottleneck, two up-blocks with skip connections, a 1x1 head that
outputs one tumor logit per pixel. A block is two (3x3 conv without bias -> norm -> ReLU); down is
a 2x2 max-pool; up is a 2x2 stride-2 transposed conv. Parameters: 117,073 at base 16 and
1,230,373 at base 52 (the paper's ~1.2M), the same for BatchNorm and GroupNorm. The input side
must be a multiple of 4 (two poolings).

What travels between a site and the server is ``get_params``: every FLOAT entry of the
state_dict, i.e. the parameters AND the BatchNorm running_mean / running_var buffers (FedAvg
averages those too). Integer buffers (BatchNorm ``num_batches_tracked``) never leave the model:
they only count local steps, are unused with the default momentum, and averaging counters is
meaningless.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Literal

import numpy as np
import torch
from torch import nn

from common.device import default_layout

Norm = Literal["batch", "group"]

# Every normalisation layer, found by module type (never by a "bn" substring in the name).
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.GroupNorm,
    nn.LayerNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)


Dims = Literal[2, 3]


def _layers(dims: int):
    """(Conv, BatchNorm, MaxPool, ConvTranspose) of a 2D or a 3D network."""
    if dims == 2:
        return nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.ConvTranspose2d
    if dims == 3:
        return nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d, nn.ConvTranspose3d
    raise ValueError(f"dims must be 2 or 3, got {dims!r}")


def _norm(norm: Norm, channels: int, groups: int, dims: int = 2) -> nn.Module:
    if norm == "batch":
        return _layers(dims)[1](channels)
    if norm == "group":
        return nn.GroupNorm(groups, channels)
    raise ValueError(f"unknown norm {norm!r}; use 'batch' or 'group'")


class ConvBlock(nn.Sequential):
    """Two (3x3 (3x3x3) conv without bias -> norm -> ReLU)."""

    def __init__(self, in_ch: int, out_ch: int, norm: Norm, groups: int, dims: int = 2) -> None:
        conv = _layers(dims)[0]
        super().__init__(
            conv(in_ch, out_ch, 3, padding=1, bias=False),
            _norm(norm, out_ch, groups, dims),
            nn.ReLU(inplace=False),  # not in place: Opacus' per-sample hooks need the inputs
            conv(out_ch, out_ch, 3, padding=1, bias=False),
            _norm(norm, out_ch, groups, dims),
            nn.ReLU(inplace=False),
        )


HEAD_BIAS = -3.0


class UNet(nn.Module):
    """2-level U-Net for binary tumor segmentation: (B, in_ch, H, W) -> logits (B, 1, H, W), or
    with ``dims=3`` (the volumetric study's 3D U-Net: 3x3x3 convolutions, 2x2x2 pooling)
    (B, in_ch, D, H, W) -> logits (B, 1, D, H, W)."""

    def __init__(
        self, in_ch: int = 1, base: int = 16, norm: Norm = "batch", groups: int = 8, dims: Dims = 2
    ) -> None:
        super().__init__()
        if in_ch < 1 or base < 1:
            raise ValueError(f"in_ch and base must be positive, got in_ch={in_ch}, base={base}")
        if norm == "group" and base % groups:
            divisors = [g for g in range(1, base + 1) if base % g == 0]
            raise ValueError(
                f"GroupNorm needs groups to divide every channel count; base={base} is not "
                f"divisible by groups={groups}. Use groups in {divisors}, or change base."
            )
        b, d = base, dims
        conv, _, pool, up = _layers(d)
        self.dims = d
        self.enc1 = ConvBlock(in_ch, b, norm, groups, d)
        self.enc2 = ConvBlock(b, 2 * b, norm, groups, d)
        self.pool = pool(2)
        self.bottleneck = ConvBlock(2 * b, 4 * b, norm, groups, d)
        self.up2 = up(4 * b, 2 * b, kernel_size=2, stride=2)
        self.dec2 = ConvBlock(4 * b, 2 * b, norm, groups, d)
        self.up1 = up(2 * b, b, kernel_size=2, stride=2)
        self.dec1 = ConvBlock(2 * b, b, norm, groups, d)
        self.head = conv(b, 1, kernel_size=1)
        # Start from a tumor prior of ~5% per pixel (logit -3) instead of p = 0.5 everywhere: the
        # soft-Dice term otherwise keeps the model on an all-background plateau for many epochs
        # (measured: 10+ pooled epochs at 96x96 vs 2 with this prior).
        nn.init.constant_(self.head.bias, HEAD_BIAS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.dims + 2:
            raise ValueError(f"a {self.dims}D U-Net takes (B, C, {self.dims} sides), got {x.shape}")
        if any(side % 4 for side in x.shape[2:]):
            raise ValueError(f"every spatial side must be a multiple of 4, got {x.shape}")
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        z = self.bottleneck(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up2(z), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        return self.head(d1)


# The default layout of build_model's convolution weights (see there): None reads
# FEDONCO_LAYOUT (common.device.default_layout: channels_last unless it says nchw); tests set it.
CHANNELS_LAST: bool | None = None


def build_model(
    base: int = 16,
    norm: Norm = "batch",
    groups: int = 8,
    seed: int = 0,
    channels_last: bool | None = None,
    dims: Dims = 2,
) -> UNet:
    """A U-Net whose initial weights depend only on ``seed``.

    The global torch RNG is neither read nor changed: initialisation runs inside a forked RNG
    seeded with ``seed``, so every method of a benchmark starts from the same weights.

    ``channels_last`` (default ``CHANNELS_LAST``, else ``FEDONCO_LAYOUT``): the convolution
    weights are stored NHWC, so oneDNN runs every convolution (and the activations it produces) in that layout without
    reordering: a training step 1.3-1.4x faster on the CPU (``bench/perf/perf_train.py``). Only
    the storage changes: the initial weights' values, names and shapes (``get_params``,
    ``state_sha256``) are those of the NCHW model; trained weights differ by float32 rounding
    (other kernels), so a run's model hashes changed once with the layout.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = UNet(in_ch=1, base=base, norm=norm, groups=groups, dims=dims)
    if channels_last is None:
        channels_last = CHANNELS_LAST
        if channels_last is None:
            channels_last = default_layout() == "channels_last"
    if channels_last:
        fmt = torch.channels_last if dims == 2 else torch.channels_last_3d
        model = model.to(memory_format=fmt)
    return model


def model_for(cfg, method: str) -> UNet:
    """The U-Net of a run's method (``cfg`` is a ``common.config.Config``): the GroupNorm twin for
    dpsgd (Opacus cannot train BatchNorm) and for groupnorm (the same network without DP, so the
    benchmark separates the cost of DP from that of the normalisation change)."""
    from common.methods import get_method

    norm = get_method(method).norm_type(cfg.model.norm)
    return build_model(cfg.model.base, norm, cfg.model.groups, cfg.seed, dims=cfg.model.dims)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _to_numpy(value: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def state_sha256(state: Mapping[str, torch.Tensor | np.ndarray]) -> str:
    """sha256 over sorted names, dtype, shape and little-endian bytes of each entry.

    Accepts a torch state_dict or a name -> numpy dict; both give the same hash for the same
    values and dtypes, so the server (numpy) and a site (torch) can compare models.
    """
    h = hashlib.sha256()
    for name in sorted(state):
        arr = _to_numpy(state[name])
        le = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
        header = f"{name}\0{arr.dtype.name}\0{','.join(map(str, arr.shape))}\0{le.nbytes}\0"
        h.update(header.encode())
        h.update(le.tobytes())
    return h.hexdigest()


def float_keys(model: nn.Module) -> list[str]:
    """Sorted state_dict keys with a floating dtype: what get_params / set_params move."""
    return sorted(k for k, v in model.state_dict().items() if v.is_floating_point())


def buffer_keys(model: nn.Module) -> set[str]:
    """state_dict keys of buffers (BatchNorm running statistics and counters), not parameters:
    what a strategy must not treat as weights to optimise (``Strategy.setup``)."""
    return {k for k, _ in model.named_buffers()}


def get_params(model: nn.Module) -> dict[str, np.ndarray]:
    """Copies of every float state_dict entry (parameters and BatchNorm running stats)."""
    state = model.state_dict()
    return {k: state[k].detach().cpu().numpy().copy() for k in float_keys(model)}


def set_params(model: nn.Module, params: Mapping[str, np.ndarray], *, strict: bool = True) -> None:
    """Copy ``params`` into the model in place (optimizer references stay valid).

    With ``strict`` the names must be exactly the float keys; with ``strict=False`` a subset is
    allowed and the other entries are left untouched (FedBN: norm layers stay local). Unknown or
    integer names, and shape mismatches, raise ValueError before anything is written.
    """
    state = model.state_dict()
    allowed = set(float_keys(model))
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(f"not float state_dict entries of this model: {unknown}")
    missing = sorted(allowed - set(params))
    if strict and missing:
        raise ValueError(f"missing entries (pass strict=False to set a subset): {missing}")
    for name, value in params.items():
        if tuple(value.shape) != tuple(state[name].shape):
            raise ValueError(
                f"{name}: shape {tuple(value.shape)} does not match the model's "
                f"{tuple(state[name].shape)}"
            )
    with torch.no_grad():
        for name, value in params.items():
            state[name].copy_(torch.as_tensor(np.asarray(value)))


def norm_keys(model: nn.Module) -> set[str]:
    """state_dict keys (parameters and buffers) of every normalisation layer, found by type."""
    keys: set[str] = set()
    for module_name, module in model.named_modules():
        if isinstance(module, NORM_TYPES):
            prefix = f"{module_name}." if module_name else ""
            keys.update(prefix + k for k in module.state_dict())
    return keys
