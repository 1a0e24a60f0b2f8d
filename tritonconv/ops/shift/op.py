"""torch registration of ShiftConv2d: custom ops (opaque to torch.compile), their fake (shape) functions,
the autograd formula, and the per-call dispatch between Triton and the published fallback."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from tritonconv import dispatch
from tritonconv._op import fake_gradients, fake_output, run_backward, run_forward, weight_bias_backward
from tritonconv.ops.shift import kernels, launch, reference
from tritonconv.ops.shift.spec import ShiftSpec

OPERATOR = dispatch.Operator(
    name="shift",
    kernel_sources=(Path(kernels.__file__), Path(launch.__file__)),
    kernels_of_pass={"forward": ("forward",), "backward": ("backward_input", "backward_weight")},
    default_tile=launch.default_tile,
)


@torch.library.custom_op("tritonconv::shift_conv2d", mutates_args=())
def _shift_conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor], kernel_size: int, dilation: int, stride: int,
                  assignment: str) -> Tensor:
    spec = ShiftSpec.from_tensors(x, weight, bias, kernel_size=kernel_size, dilation=dilation, stride=stride,
                                  assignment=assignment)
    return run_forward(OPERATOR, spec, x, lambda tiles: launch.forward(x, weight, bias, spec, tiles["forward"]),
                       lambda: reference.fallback_forward(x, weight, bias, spec))


@_shift_conv2d.register_fake
def _(x, weight, bias, kernel_size, dilation, stride, assignment):
    spec = ShiftSpec.from_tensors(x, weight, bias, kernel_size=kernel_size, dilation=dilation, stride=stride,
                                  assignment=assignment)
    return fake_output(x, spec)


@torch.library.custom_op("tritonconv::shift_conv2d_backward", mutates_args=())
def _shift_conv2d_backward(grad: Tensor, x: Tensor, weight: Tensor, has_bias: bool, kernel_size: int, dilation: int,
                           stride: int, assignment: str, need_input: bool, need_weights: bool,
                           forced: str) -> tuple[Tensor, Tensor, Tensor]:
    """(grad input, grad weight, grad bias); grads that are not needed come back empty."""
    bias_stub = weight.new_empty(weight.shape[0]) if has_bias else None
    spec = ShiftSpec.from_tensors(x, weight, bias_stub, kernel_size=kernel_size, dilation=dilation, stride=stride,
                                  assignment=assignment)
    return run_backward(
        OPERATOR, spec, x, forced,
        lambda tiles: weight_bias_backward(launch, grad, x, weight, spec, tiles, need_input, need_weights),
        lambda: reference.fallback_backward(grad, x, weight, spec, need_input, need_weights))


@_shift_conv2d_backward.register_fake
def _(grad, x, weight, has_bias, kernel_size, dilation, stride, assignment, need_input, need_weights, forced):
    return fake_gradients(x, need_input, need_weights, weight, (weight.shape[0],) if has_bias else None)


def _setup_context(ctx, inputs, output):
    x, weight, bias, kernel_size, dilation, stride, assignment = inputs
    ctx.save_for_backward(x, weight)
    ctx.args = (bias is not None, kernel_size, dilation, stride, assignment)
    # The backward may run on an autograd worker thread that does not see use_backend(): capture it.
    ctx.forced = dispatch.forced_for_backward()


def _backward(ctx, grad):
    x, weight = ctx.saved_tensors
    need_input = ctx.needs_input_grad[0]
    need_weights = any(ctx.needs_input_grad[1:3])
    dx, dw, db = torch.ops.tritonconv.shift_conv2d_backward(grad, x, weight, *ctx.args, need_input, need_weights,
                                                            ctx.forced)
    return (dx if need_input else None, dw if need_weights else None,
            db if need_weights and ctx.args[0] else None, None, None, None, None)


_shift_conv2d.register_autograd(_backward, setup_context=_setup_context)


def shift_conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, kernel_size: int = 3, dilation: int = 1,
                 stride: int = 1, assignment: str = "interleaved") -> Tensor:
    """Functional ShiftConv2d (SPEC section 3); see ``tritonconv.ShiftConv2d``."""
    return torch.ops.tritonconv.shift_conv2d(x, weight, bias, kernel_size, dilation, stride, assignment)


def explain(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, kernel_size: int = 3, dilation: int = 1,
            stride: int = 1, assignment: str = "interleaved", pass_: str = "forward") -> dispatch.Decision:
    """The backend this call's ``pass_`` would take, and why, without running it."""
    spec = ShiftSpec.from_tensors(x, weight, bias, kernel_size=kernel_size, dilation=dilation, stride=stride,
                                  assignment=assignment)
    return dispatch.explain(OPERATOR, spec, pass_, x.device)
