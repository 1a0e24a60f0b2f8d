"""torch registration of the depthwise conv: operators (opaque to torch.compile), their fake (shape)
functions, the autograd formula, and the per-call dispatch between Triton and cuDNN."""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from tritonconv import dispatch
from tritonconv._layout import empty_like_layout
from tritonconv._op import define_op, fake_gradients, fake_output, run_backward, run_forward, training_function
from tritonconv._validation import check_tensor
from tritonconv._weights import noting_weight_copy
from tritonconv.ops.depthwise import kernels, launch, reference
from tritonconv.ops.depthwise.layout import empty_grad, in_grad_layout
from tritonconv.ops.depthwise.spec import DepthwiseSpec, default_padding, normalize_activation, triton_unsupported

OPERATOR = dispatch.Operator.of("depthwise", kernels, launch, triton_unsupported=triton_unsupported)


def _spec(x, weight, bias, window, activation, concat_input) -> DepthwiseSpec:
    stride, padding, dilation, multiplier = window
    return DepthwiseSpec.from_tensors(x, weight, bias, stride=stride, padding=padding, dilation=dilation,
                                      multiplier=multiplier, activation=activation, concat_input=concat_input)


# The integer hyperparameters travel as one list, ``window`` = [stride, padding, dilation, multiplier]:
# the dispatcher parses each argument of every call, and one list of ints is the cheapest to parse.
def _depthwise_conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor], window: list[int], activation: str,
                      concat_input: bool) -> Tensor:
    spec = _spec(x, weight, bias, window, activation, concat_input)
    return run_forward(OPERATOR, spec, x, lambda tiles: launch.forward(x, weight, bias, spec, tiles["forward"]),
                       lambda: reference.fallback_forward(x, weight, bias, spec))


def _depthwise_conv2d_fake(x, weight, bias, window, activation, concat_input):
    return fake_output(x, _spec(x, weight, bias, window, activation, concat_input))


def _depthwise_conv2d_backward(grad: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor], out: Tensor,
                               window: list[int], activation: str, concat_input: bool, need_input: bool,
                               need_weights: bool, forced: str) -> tuple[Tensor, Tensor, Tensor]:
    """(grad input, grad weight, grad bias); grads that are not needed come back empty."""
    spec = _spec(x, weight, bias, window, activation, concat_input)

    def triton(tiles):
        channels = spec.in_channels if concat_input else 0  # the copied input leads the output
        maps_grad, maps = grad[:, channels:], out[:, channels:]
        dx = dw = db = None
        add = grad[:, :channels] if concat_input else None
        if need_weights and need_input and spec.activation != "none":
            # The weight gradient masks dy by the activation anyway: it writes that dz for the input
            # gradient too, which then needs no masking launch of its own.
            dz = empty_like_layout((spec.batch, spec.out_channels, spec.out_height, spec.out_width), x,
                                   dtype=grad.dtype)
            dw, db = launch.backward_weight(maps_grad, maps, x, spec, tiles["backward_weight"], grad_out=dz,
                                            weight=weight)
            dx = launch.backward_input(dz, dz, weight, spec, tiles["backward_input"], x, activation="none", add=add)
            return dx, dw, db
        if need_input:
            dx = launch.backward_input(maps_grad, maps, weight, spec, tiles["backward_input"], x, add=add)
        if need_weights:
            dw, db = launch.backward_weight(maps_grad, maps, x, spec, tiles["backward_weight"], weight=weight)
        return dx, dw, db

    def fallback():
        dx, dw, db = reference.fallback_backward(grad, x, weight, bias, spec, need_input, need_weights)
        return dx, in_grad_layout(dw, weight), db

    return run_backward(OPERATOR, spec, x, forced, triton, fallback)


def _depthwise_conv2d_backward_fake(grad, x, weight, bias, out, window, activation, concat_input, need_input,
                                    need_weights, forced):
    dx, dw, db = fake_gradients(x, need_input, need_weights, weight, bias)
    if need_weights:  # the weight gradient has the weight's strides (layout.grad_strides)
        dw = empty_grad(weight, weight.shape, device=weight.device, dtype=weight.dtype)
    return dx, dw, db


FORWARD_OP = define_op("depthwise_conv2d", _depthwise_conv2d, _depthwise_conv2d_fake)
BACKWARD_OP = define_op("depthwise_conv2d_backward", _depthwise_conv2d_backward, _depthwise_conv2d_backward_fake)
_TRAINING = training_function(FORWARD_OP, BACKWARD_OP, params=2, saves_output=True)


def _multiplier(x, weight) -> int:
    check_tensor("input", x, rank=4)
    check_tensor("weight", weight, rank=4)
    return max(1, -(-weight.shape[0] // max(x.shape[1], 1)))


def depthwise_conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride: int = 1,
                     padding: Optional[int] = None, dilation: int = 1, activation: Optional[str] = None) -> Tensor:
    """``act(conv2d(x, weight, bias, stride, padding, dilation, groups=C))``; ``weight`` [C*m, 1, k, k]
    (channel multiplier m), ``padding=None`` means ``dilation*(k//2)``, activation None/"relu"/"relu6"."""
    multiplier = _multiplier(x, weight)
    padding = default_padding(weight.shape[-1], dilation) if padding is None else padding
    return _TRAINING(x, weight, bias, [stride, padding, dilation, multiplier],
                                                 normalize_activation("activation", activation), False)


def ghost_concat(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, multiplier: int = 1,
                 activation: Optional[str] = None) -> Tensor:
    """``cat([x, act(dwconv(x) + bias)], 1)`` in one launch (the Ghost module's cheap operation).

    ``weight`` [G, 1, k, k] holds the first G <= C*multiplier filters of a depthwise conv with channel
    multiplier ``multiplier`` (stride 1, padding k//2), so the output has C + G channels.
    """
    check_tensor("input", x, rank=4)
    check_tensor("weight", weight, rank=4)
    return _TRAINING(x, weight, bias, [1, weight.shape[-1] // 2, 1, multiplier],
                                                 normalize_activation("activation", activation), True)


def explain(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride: int = 1, padding: Optional[int] = None,
            dilation: int = 1, activation: Optional[str] = None, pass_: str = "forward") -> dispatch.Decision:
    """The backend this call's ``pass_`` would take, and why, without running it."""
    multiplier = _multiplier(x, weight)
    padding = default_padding(weight.shape[-1], dilation) if padding is None else padding
    spec = _spec(x, weight, bias, (stride, padding, dilation, multiplier),
                 normalize_activation("activation", activation), False)
    return noting_weight_copy(dispatch.explain(OPERATOR, spec, pass_, x.device), weight, "[k*k, OC]")
