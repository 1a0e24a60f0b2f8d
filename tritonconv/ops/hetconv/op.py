"""torch registration of HetConv2d: operators (opaque to torch.compile), their fake (shape) functions,
the autograd formula, and the per-call dispatch between Triton and the cuDNN fallback."""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from tritonconv import dispatch
from tritonconv._op import define_op, fake_gradients, fake_output, run_backward, run_forward, training_function
from tritonconv.ops.hetconv import launch
from tritonconv.ops.hetconv.adapter import ADAPTER
from tritonconv.ops.hetconv.spec import HetConvSpec

OPERATOR = ADAPTER.operator


def _hetconv2d(x: Tensor, weight: Tensor, weight_pw: Tensor, bias: Optional[Tensor], stride: int, p: int) -> Tensor:
    spec = HetConvSpec.from_tensors(x, weight, weight_pw, bias, stride=stride, p=p)
    return run_forward(ADAPTER, spec, {"x": x, "weight": weight, "weight_pw": weight_pw, "bias": bias})


def _hetconv2d_fake(x, weight, weight_pw, bias, stride, p):
    spec = HetConvSpec.from_tensors(x, weight, weight_pw, bias, stride=stride, p=p)
    return fake_output(x, spec)


def _hetconv2d_backward(grad: Tensor, x: Tensor, weight: Tensor, weight_pw: Tensor, bias: Optional[Tensor],
                        stride: int, p: int, need_input: bool, need_weights: bool,
                        forced: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(grad input, grad weight, grad weight_pw, grad bias); grads that are not needed come back empty."""
    spec = HetConvSpec.from_tensors(x, weight, weight_pw, bias, stride=stride, p=p)
    return run_backward(ADAPTER, spec, {"x": x, "weight": weight, "weight_pw": weight_pw, "bias": bias}, grad,
                        need_input, need_weights, forced)


def _hetconv2d_backward_fake(grad, x, weight, weight_pw, bias, stride, p, need_input, need_weights, forced):
    dx, dw, dpw, db = fake_gradients(x, need_input, need_weights, weight, weight_pw, bias)
    if need_weights:  # grad weight in its layout: a compiled graph that reads it trusts these strides
        dw = dw.contiguous(memory_format=launch.grad_weight_format(weight))
    return dx, dw, dpw, db


FORWARD_OP = define_op("hetconv2d", _hetconv2d, _hetconv2d_fake)
BACKWARD_OP = define_op("hetconv2d_backward", _hetconv2d_backward, _hetconv2d_backward_fake)
_TRAINING = training_function(FORWARD_OP, BACKWARD_OP, params=3)


def hetconv2d(x: Tensor, weight: Tensor, weight_pw: Tensor, bias: Optional[Tensor] = None, stride: int = 1,
              p: int = 4) -> Tensor:
    """Functional HetConv2d (SPEC section 1, blocked layout); see ``tritonconv.HetConv2d``."""
    return _TRAINING(x, weight, weight_pw, bias, stride, p)


def explain(x: Tensor, weight: Tensor, weight_pw: Tensor, bias: Optional[Tensor] = None, stride: int = 1,
            p: int = 4, pass_: str = "forward") -> dispatch.Decision:
    """The backend this call's ``pass_`` would take, and why, without running it."""
    spec = HetConvSpec.from_tensors(x, weight, weight_pw, bias, stride=stride, p=p)
    decision = dispatch.explain(OPERATOR, spec, pass_, x.device)
    copies = launch.layout_copies(x, weight)
    if decision.backend == "triton" and copies:
        decision = dispatch.Decision(decision.backend, f"{decision.reason}; {copies}", decision.tiles)
    return decision
