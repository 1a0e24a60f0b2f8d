"""torch registration of VersatileConv2d: custom ops (opaque to torch.compile), their fake (shape)
functions, the autograd formula, and the per-call dispatch between Triton and the published fallback."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from tritonconv import dispatch
from tritonconv._op import fake_gradients, fake_output, register_training, run_backward, run_forward
from tritonconv._weights import grad_strides, in_grad_layout, noting_weight_copy
from tritonconv.ops.versatile import kernels, launch, reference
from tritonconv.ops.versatile.spec import VersatileSpec, triton_unsupported

OPERATOR = dispatch.Operator(
    name="versatile",
    kernel_sources=(Path(kernels.__file__), Path(launch.__file__)),
    kernels_of_pass={"forward": ("forward",), "backward": ("backward_input", "backward_weight")},
    default_tile=launch.default_tile,
    triton_unsupported=triton_unsupported,
)


def _spec(x, weight, bias, config) -> VersatileSpec:
    out_channels, stride, padding, dilation, delta, g = config
    return VersatileSpec.from_tensors(x, weight, bias, out_channels=out_channels, stride=stride, padding=padding,
                                      dilation=dilation, delta=delta, g=g)


# ``config`` = [out_channels, stride, padding, dilation, delta, g]: one list, as torch's custom-op autograd
# costs the square of the argument count per call (see the depthwise op).
@torch.library.custom_op("tritonconv::versatile_conv2d", mutates_args=())
def _versatile_conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor], config: list[int]) -> Tensor:
    spec = _spec(x, weight, bias, config)
    return run_forward(OPERATOR, spec, x, lambda tiles: launch.forward(x, weight, bias, spec, tiles["forward"]),
                       lambda: reference.fallback_forward(x, weight, bias, spec))


@_versatile_conv2d.register_fake
def _(x, weight, bias, config):
    return fake_output(x, _spec(x, weight, bias, config))


@torch.library.custom_op("tritonconv::versatile_conv2d_backward", mutates_args=())
def _versatile_conv2d_backward(grad: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor], config: list[int],
                               need_input: bool, need_weights: bool, forced: str) -> tuple[Tensor, Tensor, Tensor]:
    """(grad input, grad weight, grad bias); grads that are not needed come back empty."""
    spec = _spec(x, weight, bias, config)

    def triton(tiles):
        dx = launch.backward_input(grad, weight, spec, tiles["backward_input"], x) if need_input else None
        dw, db = (launch.backward_weight(grad, x, spec, tiles["backward_weight"], weight=weight) if need_weights
                  else (None, None))
        return dx, dw, db

    def fallback():
        dx, dw, db = reference.fallback_backward(grad, x, weight, spec, need_input, need_weights)
        return dx, in_grad_layout(dw, weight), db

    return run_backward(OPERATOR, spec, x, forced, triton, fallback)


@_versatile_conv2d_backward.register_fake
def _(grad, x, weight, bias, config, need_input, need_weights, forced):
    dx, dw, db = fake_gradients(x, need_input, need_weights, weight, bias)
    if need_weights:  # the weight gradient has the weight's strides (_weights.grad_strides)
        dw = weight.new_empty_strided(weight.shape, grad_strides(weight, weight.shape))
    return dx, dw, db


register_training(_versatile_conv2d, torch.ops.tritonconv.versatile_conv2d_backward, params=2)


def versatile_conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor], out_channels: int, stride: int = 1,
                     padding: Optional[int] = None, dilation: int = 1, delta: int = 0, g: int = 1) -> Tensor:
    """Functional VersatileConv2d (SPEC section 4); see ``tritonconv.VersatileConv2d``.
    ``padding=None`` means ``dilation * (k // 2)``."""
    if padding is None:
        padding = dilation * (weight.shape[-1] // 2) if isinstance(weight, Tensor) and weight.dim() == 4 else 0
    return torch.ops.tritonconv.versatile_conv2d(x, weight, bias, [out_channels, stride, padding, dilation, delta, g])


def explain(x: Tensor, weight: Tensor, bias: Optional[Tensor], out_channels: int, stride: int = 1,
            padding: Optional[int] = None, dilation: int = 1, delta: int = 0, g: int = 1,
            pass_: str = "forward") -> dispatch.Decision:
    """The backend this call's ``pass_`` would take, and why, without running it."""
    spec = _spec(x, weight, bias, (out_channels, stride, padding, dilation, delta, g))
    return noting_weight_copy(dispatch.explain(OPERATOR, spec, pass_, x.device), weight, "[k*k, n_w, c_hat]")
