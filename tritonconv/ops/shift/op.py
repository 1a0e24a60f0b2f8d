"""torch registration of ShiftConv2d: operators (opaque to torch.compile), their fake (shape) functions,
the autograd formula, and the per-call dispatch between Triton and the published fallback."""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from tritonconv import dispatch
from tritonconv._op import define_op, fake_gradients, fake_output, run_backward, run_forward, training_function
from tritonconv.ops.shift.adapter import ADAPTER
from tritonconv.ops.shift.spec import ShiftSpec

OPERATOR = ADAPTER.operator


def _spec(x, weight, bias, window, assignment) -> ShiftSpec:
    kernel_size, dilation, stride = window
    return ShiftSpec.from_tensors(x, weight, bias, kernel_size=kernel_size, dilation=dilation, stride=stride,
                                  assignment=assignment)


# ``window`` = [kernel_size, dilation, stride]: the integer hyperparameters as one argument
# (see the depthwise op).
def _shift_conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor], window: list[int], assignment: str) -> Tensor:
    return run_forward(ADAPTER, _spec(x, weight, bias, window, assignment), {"x": x, "weight": weight, "bias": bias})


def _shift_conv2d_fake(x, weight, bias, window, assignment):
    return fake_output(x, _spec(x, weight, bias, window, assignment))


def _shift_conv2d_backward(grad: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor], window: list[int],
                           assignment: str, need_input: bool, need_weights: bool,
                           forced: str) -> tuple[Tensor, Tensor, Tensor]:
    """(grad input, grad weight, grad bias); grads that are not needed come back empty."""
    return run_backward(ADAPTER, _spec(x, weight, bias, window, assignment), {"x": x, "weight": weight, "bias": bias},
                        grad, need_input, need_weights, forced)


def _shift_conv2d_backward_fake(grad, x, weight, bias, window, assignment, need_input, need_weights, forced):
    return fake_gradients(x, need_input, need_weights, weight, bias)


FORWARD_OP = define_op("shift_conv2d", _shift_conv2d, _shift_conv2d_fake)
BACKWARD_OP = define_op("shift_conv2d_backward", _shift_conv2d_backward, _shift_conv2d_backward_fake)
_TRAINING = training_function(FORWARD_OP, BACKWARD_OP, params=2)


def shift_conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, kernel_size: int = 3, dilation: int = 1,
                 stride: int = 1, assignment: str = "interleaved") -> Tensor:
    """Functional ShiftConv2d (SPEC section 3); see ``tritonconv.ShiftConv2d``."""
    return _TRAINING(x, weight, bias, [kernel_size, dilation, stride], assignment)


def explain(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, kernel_size: int = 3, dilation: int = 1,
            stride: int = 1, assignment: str = "interleaved", pass_: str = "forward") -> dispatch.Decision:
    """The backend this call's ``pass_`` would take, and why, without running it."""
    return dispatch.explain(OPERATOR, _spec(x, weight, bias, (kernel_size, dilation, stride), assignment), pass_,
                            x.device)
