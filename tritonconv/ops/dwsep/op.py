"""torch registration of the fused depthwise-separable conv: operators (opaque to torch.compile), their
fake (shape) functions, the autograd formula, and the per-call dispatch between Triton and cuDNN."""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

from torch import Tensor

from tritonconv import dispatch
from tritonconv._op import define_op, fake_gradients, fake_output, run_backward, run_forward, training_function
from tritonconv.ops.depthwise.spec import default_padding, normalize_activation
from tritonconv.ops.dwsep import launch
from tritonconv.ops.dwsep.adapter import ADAPTER
from tritonconv.ops.dwsep.spec import DwSepSpec

OPERATOR = ADAPTER.operator


def _spec(x, dw_weight, dw_bias, pw_weight, pw_bias, window, activation, out_activation):
    stride, padding, dilation = window
    return DwSepSpec.from_tensors(x, dw_weight, dw_bias, pw_weight, pw_bias, stride=stride, padding=padding,
                                  dilation=dilation, activation=activation, out_activation=out_activation)


# ``window`` = [stride, padding, dilation]: the integer hyperparameters as one argument
# (see the depthwise op).
def _dwsep_conv2d(x: Tensor, dw_weight: Tensor, dw_bias: Optional[Tensor], pw_weight: Tensor,
                  pw_bias: Optional[Tensor], window: list[int], activation: str, out_activation: str) -> Tensor:
    spec = _spec(x, dw_weight, dw_bias, pw_weight, pw_bias, window, activation, out_activation)
    return run_forward(ADAPTER, spec, {"x": x, "dw_weight": dw_weight, "dw_bias": dw_bias, "pw_weight": pw_weight,
                                       "pw_bias": pw_bias})


def _dwsep_conv2d_fake(x, dw_weight, dw_bias, pw_weight, pw_bias, window, activation, out_activation):
    return fake_output(x, _spec(x, dw_weight, dw_bias, pw_weight, pw_bias, window, activation, out_activation))


def _dwsep_conv2d_backward(grad: Tensor, x: Tensor, dw_weight: Tensor, dw_bias: Optional[Tensor], pw_weight: Tensor,
                           pw_bias: Optional[Tensor], out: Tensor, window: list[int], activation: str,
                           out_activation: str, need_input: bool, need_weights: bool,
                           forced: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(grad input, grad dw_weight, grad dw_bias, grad pw_weight, grad pw_bias); unneeded ones come back empty."""
    spec = _spec(x, dw_weight, dw_bias, pw_weight, pw_bias, window, activation, out_activation)
    return run_backward(ADAPTER, spec, {"x": x, "dw_weight": dw_weight, "dw_bias": dw_bias, "pw_weight": pw_weight,
                                        "pw_bias": pw_bias, "out": out}, grad, need_input, need_weights, forced)


def _dwsep_conv2d_backward_fake(grad, x, dw_weight, dw_bias, pw_weight, pw_bias, out, window, activation,
                                out_activation, need_input, need_weights, forced):
    return fake_gradients(x, need_input, need_weights, dw_weight, dw_bias, pw_weight, pw_bias, in_weight_layout=(0,))


FORWARD_OP = define_op("dwsep_conv2d", _dwsep_conv2d, _dwsep_conv2d_fake)
BACKWARD_OP = define_op("dwsep_conv2d_backward", _dwsep_conv2d_backward, _dwsep_conv2d_backward_fake)
_TRAINING = training_function(FORWARD_OP, BACKWARD_OP, params=4, saves_output=True)


def _padding(dw_weight, padding, dilation):
    if padding is not None or not isinstance(dw_weight, Tensor) or dw_weight.dim() != 4:
        return padding
    return default_padding(dw_weight.shape[-1], dilation)


def dwsep_conv2d(x: Tensor, dw_weight: Tensor, dw_bias: Optional[Tensor], pw_weight: Tensor,
                 pw_bias: Optional[Tensor] = None, stride: int = 1, padding: Optional[int] = None, dilation: int = 1,
                 activation: Optional[str] = None, out_activation: Optional[str] = None) -> Tensor:
    """Functional fused depthwise-separable conv (SPEC section 2); see ``DepthwiseSeparableConv2d``."""
    return _TRAINING(
        x, dw_weight, dw_bias, pw_weight, pw_bias, [stride, _padding(dw_weight, padding, dilation), dilation],
        normalize_activation("activation", activation), normalize_activation("out_activation", out_activation))


def explain(x: Tensor, dw_weight: Tensor, dw_bias: Optional[Tensor], pw_weight: Tensor,
            pw_bias: Optional[Tensor] = None, stride: int = 1, padding: Optional[int] = None, dilation: int = 1,
            activation: Optional[str] = None, out_activation: Optional[str] = None,
            pass_: str = "forward") -> dispatch.Decision:
    """The backend this call's ``pass_`` would take, and why, without running it."""
    spec = _spec(x, dw_weight, dw_bias, pw_weight, pw_bias, (stride, _padding(dw_weight, padding, dilation), dilation),
                 normalize_activation("activation", activation), normalize_activation("out_activation", out_activation))
    decision = dispatch.explain(OPERATOR, spec, pass_, x.device)
    if decision.backend != "triton":
        return decision
    # How the fused kernel covers the filters (and whether it recomputes the depthwise tile).
    return replace(decision, reason=f"{decision.reason}; {launch.describe_plans(spec, pass_, decision.tiles)}")
