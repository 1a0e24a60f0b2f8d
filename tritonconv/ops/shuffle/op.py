"""torch registration of the shuffled grouped 1 x 1 conv: operators, fake functions, autograd, dispatch;
and the standalone ``channel_shuffle``."""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

from torch import Tensor

from tritonconv import dispatch
from tritonconv._op import define_op, fake_gradients, fake_output, run_backward, run_forward, training_function
from tritonconv._validation import check_positive_int
from tritonconv.ops.shuffle import launch, reference
from tritonconv.ops.shuffle.adapter import ADAPTER
from tritonconv.ops.shuffle.spec import ShuffleConvSpec

OPERATOR = ADAPTER.operator


def _shuffle_conv1x1(x: Tensor, weight: Tensor, bias: Optional[Tensor], groups: int, shuffle_groups: int) -> Tensor:
    spec = ShuffleConvSpec.from_tensors(x, weight, bias, groups=groups, shuffle_groups=shuffle_groups)
    return run_forward(ADAPTER, spec, {"x": x, "weight": weight, "bias": bias})


def _shuffle_conv1x1_fake(x, weight, bias, groups, shuffle_groups):
    spec = ShuffleConvSpec.from_tensors(x, weight, bias, groups=groups, shuffle_groups=shuffle_groups)
    return fake_output(x, spec)


def _shuffle_conv1x1_backward(grad: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor], groups: int,
                              shuffle_groups: int, need_input: bool, need_weights: bool,
                              forced: str) -> tuple[Tensor, Tensor, Tensor]:
    """(grad input, grad weight, grad bias); grads that are not needed come back empty."""
    spec = ShuffleConvSpec.from_tensors(x, weight, bias, groups=groups, shuffle_groups=shuffle_groups)
    return run_backward(ADAPTER, spec, {"x": x, "weight": weight, "bias": bias}, grad, need_input, need_weights,
                        forced)


def _shuffle_conv1x1_backward_fake(grad, x, weight, bias, groups, shuffle_groups, need_input, need_weights, forced):
    return fake_gradients(x, need_input, need_weights, weight, bias)


FORWARD_OP = define_op("shuffle_conv1x1", _shuffle_conv1x1, _shuffle_conv1x1_fake)
BACKWARD_OP = define_op("shuffle_conv1x1_backward", _shuffle_conv1x1_backward, _shuffle_conv1x1_backward_fake)
_TRAINING = training_function(FORWARD_OP, BACKWARD_OP, params=2)


def shuffle_conv1x1(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, groups: int = 1,
                    shuffle_groups: int = 1) -> Tensor:
    """``channel_shuffle(conv2d(x, weight, bias, groups=groups), shuffle_groups)`` in one kernel: the
    shuffle is the store address of the grouped 1 x 1 conv (``shuffle_groups=1``: no shuffle)."""
    return _TRAINING(x, weight, bias, groups, shuffle_groups)


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """``x.view(B, g, C/g, H, W).transpose(1, 2).reshape(B, C, H, W)`` (SPEC section 6).

    Standalone, the shuffle is one copy; next to a grouped 1 x 1 conv use ``shuffle_conv1x1`` (or
    ``ShuffleUnit``), where it costs no pass over memory."""
    if not isinstance(x, Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"input must have 4 dimensions, got shape {tuple(x.shape)}")
    check_positive_int("groups", groups)
    if x.shape[1] % groups:
        raise ValueError(f"groups={groups} must divide the input's {x.shape[1]} channels")
    return reference.channel_shuffle_reference(x, groups)


def explain(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, groups: int = 1, shuffle_groups: int = 1,
            pass_: str = "forward") -> dispatch.Decision:
    """The backend this call's ``pass_`` would take, and why (the forward's formulation too), without
    running it."""
    spec = ShuffleConvSpec.from_tensors(x, weight, bias, groups=groups, shuffle_groups=shuffle_groups)
    decision = dispatch.explain(OPERATOR, spec, pass_, x.device)
    if decision.backend != "triton" or pass_ != "forward":
        return decision
    return replace(decision, reason=f"{decision.reason}; {launch.describe_forward(spec)}")
