"""torch registration of VersatileConv2d: operators (opaque to torch.compile), their fake (shape)
functions, the autograd formula, and the per-call dispatch between Triton and the published fallback."""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from tritonconv import dispatch
from tritonconv._op import define_op, fake_gradients, fake_output, run_backward, run_forward, training_function
from tritonconv._weights import noting_weight_copy
from tritonconv.ops.versatile.adapter import ADAPTER
from tritonconv.ops.versatile.spec import VersatileSpec

OPERATOR = ADAPTER.operator


def _spec(x, weight, bias, config) -> VersatileSpec:
    out_channels, stride, padding, dilation, delta, g = config
    return VersatileSpec.from_tensors(x, weight, bias, out_channels=out_channels, stride=stride, padding=padding,
                                      dilation=dilation, delta=delta, g=g)


# ``config`` = [out_channels, stride, padding, dilation, delta, g]: the integer hyperparameters as one
# argument (see the depthwise op).
def _versatile_conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor], config: list[int]) -> Tensor:
    return run_forward(ADAPTER, _spec(x, weight, bias, config), {"x": x, "weight": weight, "bias": bias})


def _versatile_conv2d_fake(x, weight, bias, config):
    return fake_output(x, _spec(x, weight, bias, config))


def _versatile_conv2d_backward(grad: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor], config: list[int],
                               need_input: bool, need_weights: bool, forced: str) -> tuple[Tensor, Tensor, Tensor]:
    """(grad input, grad weight, grad bias); grads that are not needed come back empty."""
    return run_backward(ADAPTER, _spec(x, weight, bias, config), {"x": x, "weight": weight, "bias": bias}, grad,
                        need_input, need_weights, forced)


def _versatile_conv2d_backward_fake(grad, x, weight, bias, config, need_input, need_weights, forced):
    return fake_gradients(x, need_input, need_weights, weight, bias, in_weight_layout=(0,))


FORWARD_OP = define_op("versatile_conv2d", _versatile_conv2d, _versatile_conv2d_fake)
BACKWARD_OP = define_op("versatile_conv2d_backward", _versatile_conv2d_backward, _versatile_conv2d_backward_fake)
_TRAINING = training_function(FORWARD_OP, BACKWARD_OP, params=2)


def versatile_conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor], out_channels: int, stride: int = 1,
                     padding: Optional[int] = None, dilation: int = 1, delta: int = 0, g: int = 1) -> Tensor:
    """Functional VersatileConv2d (SPEC section 4); see ``tritonconv.VersatileConv2d``.
    ``padding=None`` means ``dilation * (k // 2)``."""
    if padding is None:
        padding = dilation * (weight.shape[-1] // 2) if isinstance(weight, Tensor) and weight.dim() == 4 else 0
    return _TRAINING(x, weight, bias, [out_channels, stride, padding, dilation, delta, g])


def explain(x: Tensor, weight: Tensor, bias: Optional[Tensor], out_channels: int, stride: int = 1,
            padding: Optional[int] = None, dilation: int = 1, delta: int = 0, g: int = 1,
            pass_: str = "forward") -> dispatch.Decision:
    """The backend this call's ``pass_`` would take, and why, without running it."""
    spec = _spec(x, weight, bias, (out_channels, stride, padding, dilation, delta, g))
    return noting_weight_copy(dispatch.explain(OPERATOR, spec, pass_, x.device), weight, "[k*k, n_w, c_hat]")
