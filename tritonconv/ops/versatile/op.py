"""torch registration of VersatileConv2d: custom ops (opaque to torch.compile), their fake (shape)
functions, the autograd formula, and the per-call dispatch between Triton and the published fallback."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from tritonconv import dispatch
from tritonconv._op import fake_gradients, fake_output, run_backward, run_forward, weight_bias_backward
from tritonconv.ops.versatile import kernels, launch, reference
from tritonconv.ops.versatile.spec import VersatileSpec, triton_unsupported

OPERATOR = dispatch.Operator(
    name="versatile",
    kernel_sources=(Path(kernels.__file__), Path(launch.__file__)),
    kernels_of_pass={"forward": ("forward",), "backward": ("backward_input", "backward_weight")},
    default_tile=launch.default_tile,
    triton_unsupported=triton_unsupported,
)


def _spec(x, weight, bias, out_channels, stride, padding, dilation, delta, g) -> VersatileSpec:
    return VersatileSpec.from_tensors(x, weight, bias, out_channels=out_channels, stride=stride, padding=padding,
                                      dilation=dilation, delta=delta, g=g)


@torch.library.custom_op("tritonconv::versatile_conv2d", mutates_args=())
def _versatile_conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor], out_channels: int, stride: int,
                      padding: int, dilation: int, delta: int, g: int) -> Tensor:
    spec = _spec(x, weight, bias, out_channels, stride, padding, dilation, delta, g)
    return run_forward(OPERATOR, spec, x, lambda tiles: launch.forward(x, weight, bias, spec, tiles["forward"]),
                       lambda: reference.fallback_forward(x, weight, bias, spec))


@_versatile_conv2d.register_fake
def _(x, weight, bias, out_channels, stride, padding, dilation, delta, g):
    spec = _spec(x, weight, bias, out_channels, stride, padding, dilation, delta, g)
    return fake_output(x, spec)


@torch.library.custom_op("tritonconv::versatile_conv2d_backward", mutates_args=())
def _versatile_conv2d_backward(grad: Tensor, x: Tensor, weight: Tensor, has_bias: bool, out_channels: int,
                               stride: int, padding: int, dilation: int, delta: int, g: int, need_input: bool,
                               need_weights: bool, forced: str) -> tuple[Tensor, Tensor, Tensor]:
    """(grad input, grad weight, grad bias); grads that are not needed come back empty."""
    bias_stub = weight.new_empty(out_channels) if has_bias else None
    spec = _spec(x, weight, bias_stub, out_channels, stride, padding, dilation, delta, g)
    return run_backward(
        OPERATOR, spec, x, forced,
        lambda tiles: weight_bias_backward(launch, grad, x, weight, spec, tiles, need_input, need_weights),
        lambda: reference.fallback_backward(grad, x, weight, spec, need_input, need_weights))


@_versatile_conv2d_backward.register_fake
def _(grad, x, weight, has_bias, out_channels, stride, padding, dilation, delta, g, need_input, need_weights, forced):
    return fake_gradients(x, need_input, need_weights, weight, (out_channels,) if has_bias else None)


def _setup_context(ctx, inputs, output):
    x, weight, bias, *hyper = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias, ctx.hyper = bias is not None, tuple(hyper)
    # The backward may run on an autograd worker thread that does not see use_backend(): capture it.
    ctx.forced = dispatch.forced_for_backward()


def _backward(ctx, grad):
    x, weight = ctx.saved_tensors
    need_input = ctx.needs_input_grad[0]
    need_weights = any(ctx.needs_input_grad[1:3])
    dx, dw, db = torch.ops.tritonconv.versatile_conv2d_backward(grad, x, weight, ctx.has_bias, *ctx.hyper, need_input,
                                                                need_weights, ctx.forced)
    return (dx if need_input else None, dw if need_weights else None,
            db if need_weights and ctx.has_bias else None) + (None,) * len(ctx.hyper)


_versatile_conv2d.register_autograd(_backward, setup_context=_setup_context)


def versatile_conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor], out_channels: int, stride: int = 1,
                     padding: Optional[int] = None, dilation: int = 1, delta: int = 0, g: int = 1) -> Tensor:
    """Functional VersatileConv2d (SPEC section 4); see ``tritonconv.VersatileConv2d``.
    ``padding=None`` means ``dilation * (k // 2)``."""
    if padding is None:
        padding = dilation * (weight.shape[-1] // 2) if isinstance(weight, Tensor) and weight.dim() == 4 else 0
    return torch.ops.tritonconv.versatile_conv2d(x, weight, bias, out_channels, stride, padding, dilation, delta, g)


def explain(x: Tensor, weight: Tensor, bias: Optional[Tensor], out_channels: int, stride: int = 1,
            padding: Optional[int] = None, dilation: int = 1, delta: int = 0, g: int = 1,
            pass_: str = "forward") -> dispatch.Decision:
    """The backend this call's ``pass_`` would take, and why, without running it."""
    spec = _spec(x, weight, bias, out_channels, stride, padding, dilation, delta, g)
    return dispatch.explain(OPERATOR, spec, pass_, x.device)
