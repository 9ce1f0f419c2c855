"""Per-sample gradients for DP-SGD: Opacus' GradSampleModule around the model, and the checks a
model must pass before DP-SGD may train it."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import nn

from common.metrics import seg_loss
from common.training.dp.settings import DPConfigError

GRAD_SAMPLE_MODES = ("fast", "hooks", "functorch")


def _conv_weight_grad_sample(
    layer: nn.Conv2d | nn.ConvTranspose2d, x: torch.Tensor, gy: torch.Tensor
) -> torch.Tensor:
    """Per-sample weight gradients (B, *weight.shape) with the ordinary weight-gradient kernel.

    NCHW activations: one grouped convolution backward. Sample b's input and output channels form
    their own groups, so the weight gradient of the grouped convolution holds each sample's
    gradient separately, without Opacus' unfold of the input. Its (1, B*C, H, W) view is free in
    NCHW but a transposing copy of both tensors in channels_last, so channels_last activations
    (the ``build_model`` default) take one weight-gradient call per sample on ``x[b:b+1]``, a
    view in that layout: the per-sample part of a DP step 60 vs 93 ms at the standard size, one
    thread (``bench/perf/perf_train.py`` has the step); in that layout a layer whose kernel tiles
    its input (``_tiled_weight_grad_sample``: the U-Net's 2x2 up-convolutions and 1x1 head) is one
    batched matmul instead. A one-channel input is both layouts and stays on the grouped path
    (NCHW models keep their weights bit for bit).
    """
    b = x.shape[0]
    w = layer.weight
    transposed = isinstance(layer, nn.ConvTranspose2d)
    output_padding = [0, 0]
    if transposed:  # recover it from the shapes (forward may have been given output_size)
        for i in range(2):
            base = (
                (x.shape[2 + i] - 1) * layer.stride[i]
                - 2 * layer.padding[i]
                + layer.dilation[i] * (layer.kernel_size[i] - 1)
                + 1
            )
            output_padding[i] = gy.shape[2 + i] - base
    if (
        x.dim() == 4
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
    ):
        if (
            tuple(layer.kernel_size) == tuple(layer.stride)
            and not any(layer.padding)
            and set(layer.dilation) == {1}
            and layer.groups == 1
            and not any(output_padding)
        ):
            return _tiled_weight_grad_sample(x, gy, tuple(layer.kernel_size), transposed)
        out = w.new_empty((b, *w.shape))
        for i in range(b):
            out[i] = torch.ops.aten.convolution_backward(
                gy[i : i + 1],
                x[i : i + 1],
                w,
                None,
                list(layer.stride),
                list(layer.padding),
                list(layer.dilation),
                transposed,
                output_padding,
                layer.groups,
                [False, True, False],
            )[1]
        return out
    weight_shape = (b * w.shape[0], *w.shape[1:])
    _, grad_w, _ = torch.ops.aten.convolution_backward(
        gy.reshape(1, -1, *gy.shape[2:]),
        x.reshape(1, -1, *x.shape[2:]),
        w.new_empty(weight_shape),  # only its shape is read when just the weight grad is asked
        None,
        list(layer.stride),
        list(layer.padding),
        list(layer.dilation),
        transposed,
        output_padding,
        layer.groups * b,
        [False, True, False],
    )
    return grad_w.view(b, *w.shape)


def _tiled_weight_grad_sample(
    x: torch.Tensor, gy: torch.Tensor, kernel: tuple[int, int], transposed: bool
) -> torch.Tensor:
    """Per-sample weight gradients (B, *weight.shape) of a 2-D (transposed) convolution whose
    kernel equals its stride, without padding, dilation or groups (a 1x1 convolution, a 2x2
    stride-2 up-convolution): each position of the smaller map meets its own (kh, kw) tile of the
    larger one, so sample b's gradient is one matmul, (C_small x positions) @ (positions x
    kh*kw*C_large), and the batch is one ``bmm``. The tiles are a view of channels_last maps when
    the kernel is 1x1, else one copy of the larger map. Same weight layout as the layer:
    (C_out, C_in, kh, kw) for a convolution (the smaller map is the output gradient),
    (C_in, C_out, kh, kw) for a transposed one (the smaller map is its input)."""
    small, large = (x, gy) if transposed else (gy, x)
    b, c_small, h, w = small.shape
    c_large = large.shape[1]
    kh, kw = kernel
    tiles = (
        large[:, :, : h * kh, : w * kw]  # a convolution ignores rows/columns beyond the last tile
        .permute(0, 2, 3, 1)
        .reshape(b, h, kh, w, kw, c_large)
        .permute(0, 1, 3, 2, 4, 5)
        .reshape(b, h * w, kh * kw * c_large)
    )
    rows = small.permute(0, 2, 3, 1).reshape(b, h * w, c_small)
    grad = torch.bmm(rows.transpose(1, 2), tiles).view(b, c_small, kh, kw, c_large)
    return grad.permute(0, 1, 4, 2, 3).contiguous()


def _fast_conv_grad_sample(
    layer: nn.Module, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    from opacus.grad_sample.conv import compute_conv_grad_sample
    from opacus.grad_sample.functorch import ft_compute_per_sample_gradient

    x = activations[0].to(backprops.dtype)
    plain = isinstance(layer.padding, tuple) and layer.padding_mode == "zeros"
    if not plain or x.dim() != 4:  # string padding, non-zero padding modes: Opacus' samplers
        if isinstance(layer, nn.ConvTranspose2d):
            return ft_compute_per_sample_gradient(layer, activations, backprops)
        return compute_conv_grad_sample(layer, activations, backprops)
    out: dict[nn.Parameter, torch.Tensor] = {}
    if layer.weight.requires_grad:
        out[layer.weight] = _conv_weight_grad_sample(layer, x, backprops)
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = backprops.sum(dim=(2, 3))
    return out


@functools.cache
def _grad_sample_module_cls(mode: str):
    from opacus.grad_sample import GradSampleModule

    if mode in ("hooks", "functorch"):
        return GradSampleModule

    class FastConvGradSampleModule(GradSampleModule):
        """Opacus' GradSampleModule with grouped-convolution samplers for 2-D (transposed) convs."""

        GRAD_SAMPLERS = {
            **GradSampleModule.GRAD_SAMPLERS,
            nn.Conv2d: _fast_conv_grad_sample,
            nn.ConvTranspose2d: _fast_conv_grad_sample,
        }

    return FastConvGradSampleModule


def make_grad_sample_module(model: nn.Module, grad_sample_mode: str = "fast"):
    """Wrap ``model`` (no copy: the wrapper shares its parameters) to compute ``p.grad_sample``.

    Built with ``loss_reduction="sum"``: feed it through ``per_sample_backward``. The wrapper's
    own state_dict keys carry Opacus' ``_module.`` prefix; ``model``'s do not. Call
    ``release_grad_sample_module`` to remove every hook and attribute afterwards.
    """
    if grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise DPConfigError(
            f"grad_sample_mode must be one of {GRAD_SAMPLE_MODES}, got {grad_sample_mode!r}"
        )
    if grad_sample_mode != "fast":
        # Opacus 1.6.0's stock convolution sampler (unfold) returns wrong per-sample gradients
        # for channels_last weights and activations (every entry off, up to 1e4 relative; the
        # build_model default since the layout change): these comparison modes run NCHW. The
        # project's own sampler ("fast") is layout-agnostic (tests/unit/test_dp.py).
        model.to(memory_format=torch.contiguous_format)
    cls = _grad_sample_module_cls(grad_sample_mode)
    return cls(
        model,
        batch_first=True,
        loss_reduction="sum",
        strict=True,
        force_functorch=grad_sample_mode == "functorch",
    )


def per_sample_backward(gsm, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Forward and backward that fill ``p.grad_sample``; returns the batch's mean loss (detached).

    ``p.grad_sample[i]`` is the gradient of image i's own ``seg_loss``. Two things make this
    cheaper than Opacus' usual recipe, with identical results (tested):

    - the wrapper has ``loss_reduction="sum"`` and gets the SUM of the per-image losses, so the
      per-sample gradients need no rescaling (with a mean loss Opacus multiplies every layer's
      output gradient by the batch size, one extra pass per layer). The DPOptimizer still
      divides the clipped, noised sum by the EXPECTED batch size (its ``loss_reduction="mean"``);
    - ``backward(inputs=[images])`` asks autograd only for gradients that flow to the input:
      the per-sample hooks see every layer's output gradient, but the ordinary weight gradients,
      which the DPOptimizer would overwrite anyway, are never computed.
    """
    images = images.detach().requires_grad_(True)
    losses = seg_loss(gsm(images), masks, reduction="none")
    total = losses.sum()
    if not torch.isfinite(total):
        raise FloatingPointError("non-finite loss: lower the lr")
    total.backward(inputs=[images])
    return total.detach() / images.shape[0]


def release_grad_sample_module(gsm, params: Sequence[nn.Parameter]) -> None:
    """Undo ``make_grad_sample_module`` and what a ``DPOptimizer`` left on the parameters.

    Opacus' ``to_standard_module`` removes the hooks and the wrapper's parameter attributes. Two
    things Opacus 1.6 (pinned in pyproject.toml) has no public way to undo remain and are dropped
    here, so the model carries nothing of DP-SGD afterwards: the per-module ``activations`` lists
    of its forward hooks, and the optimizer's ``summed_grad`` on each parameter.
    """
    gsm.to_standard_module()
    for module in gsm._module.modules():
        if hasattr(module, "activations"):
            del module.activations
    for p in params:
        for attr in ("grad_sample", "summed_grad"):
            if hasattr(p, attr):
                delattr(p, attr)
        p.grad = None


def check_dp_model(model: nn.Module) -> None:
    """Refuse models DP-SGD cannot train honestly: BatchNorm, in-place activations, buffers."""
    bn = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if bn:
        raise DPConfigError(
            f"DP-SGD cannot train BatchNorm (it mixes the slices of a batch, so there is no "
            f"per-sample gradient, and its running statistics are un-noised data): {bn[:3]}. "
            f"Build the GroupNorm twin: build_model(base, norm='group', groups=...)"
        )
    inplace = [n for n, m in model.named_modules() if getattr(m, "inplace", False) is True]
    if inplace:
        raise DPConfigError(
            f"in-place activations break Opacus' per-sample gradient hooks (opacus#828): "
            f"{inplace[:3]}; construct them with inplace=False"
        )
    from opacus.validators import ModuleValidator

    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise DPConfigError(f"model not supported by Opacus: {errors}")
