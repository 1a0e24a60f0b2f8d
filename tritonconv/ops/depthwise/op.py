"""torch registration of the depthwise conv: operators (opaque to torch.compile), their fake (shape)
functions, the autograd formula, and the per-call dispatch between Triton and cuDNN."""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from tritonconv import dispatch
from tritonconv._op import define_op, fake_gradients, fake_output, run_backward, run_forward, training_function
from tritonconv._validation import check_tensor
from tritonconv._weights import noting_weight_copy
from tritonconv.ops.depthwise.adapter import ADAPTER
from tritonconv.ops.depthwise.spec import DepthwiseSpec, default_padding, normalize_activation

OPERATOR = ADAPTER.operator


def _spec(x, weight, bias, window, activation, concat_input) -> DepthwiseSpec:
    stride, padding, dilation, multiplier = window
    return DepthwiseSpec.from_tensors(x, weight, bias, stride=stride, padding=padding, dilation=dilation,
                                      multiplier=multiplier, activation=activation, concat_input=concat_input)


# The integer hyperparameters travel as one list, ``window`` = [stride, padding, dilation, multiplier]:
# the dispatcher parses each argument of every call, and one list of ints is the cheapest to parse.
def _depthwise_conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor], window: list[int], activation: str,
                      concat_input: bool) -> Tensor:
    return run_forward(ADAPTER, _spec(x, weight, bias, window, activation, concat_input),
                       {"x": x, "weight": weight, "bias": bias})


def _depthwise_conv2d_fake(x, weight, bias, window, activation, concat_input):
    return fake_output(x, _spec(x, weight, bias, window, activation, concat_input))


def _depthwise_conv2d_backward(grad: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor], out: Tensor,
                               window: list[int], activation: str, concat_input: bool, need_input: bool,
                               need_weights: bool, forced: str) -> tuple[Tensor, Tensor, Tensor]:
    """(grad input, grad weight, grad bias); grads that are not needed come back empty."""
    return run_backward(ADAPTER, _spec(x, weight, bias, window, activation, concat_input),
                        {"x": x, "weight": weight, "bias": bias, "out": out}, grad, need_input, need_weights, forced)


def _depthwise_conv2d_backward_fake(grad, x, weight, bias, out, window, activation, concat_input, need_input,
                                    need_weights, forced):
    return fake_gradients(x, need_input, need_weights, weight, bias, in_weight_layout=(0,))


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
