"""Weights the layers keep taps-major: [A, B, kh, kw] (the state_dict's shape) laid out [kh, kw, A, B] in
memory, the tap axis outermost and the rest contiguous, which is what the depthwise kernels ([k*k, OC],
B = 1) and the VersatileConv2d kernels ([k*k, n_w, c_hat]) read without a copy.

That is neither ``is_contiguous()`` nor ``is_contiguous(channels_last)``, hence the one predicate here
(``is_taps_major``), which ignores the strides of size-1 dimensions as torch does. The layers allocate
such weights taps-major and keep them so (``TapsMajorWeights``): ``.to(dtype/device)``, ``.cuda()``,
``.half()``, ``copy.deepcopy`` and ``load_state_dict`` (``copy_``) keep a tensor's strides;
``.to(memory_format=torch.channels_last)`` re-strides every 4-D parameter and
``load_state_dict(assign=True)`` takes the source's tensor, so after those the layer lays the weight out
again, in place (``param.data``: the Parameter object, which optimizers hold, is kept). Nothing is
cached: a weight in any other layout is copied per call (one launch), so nothing can go stale (a write
through ``.data`` bypasses every version counter).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Iterable

import torch
from torch import Tensor, nn

from tritonconv._layout import empty


def same_layout(shape, strides, expected) -> bool:
    """Equal strides, those of size-1 dimensions aside (they address nothing)."""
    return all(n <= 1 or s == e for n, s, e in zip(shape, strides, expected))


def taps_major_strides(shape) -> tuple[int, int, int, int]:
    """The strides of a compact taps-major [A, B, kh, kw] tensor: [kh, kw, A, B] in memory."""
    a, b, _, kw = shape
    return (b, 1, kw * a * b, a * b)


def contiguous_strides(shape) -> tuple[int, int, int, int]:
    _, b, kh, kw = shape
    return (b * kh * kw, kh * kw, kw, 1)


def is_taps_major(weight: Tensor) -> bool:
    """Whether the kernels read ``weight`` [A, B, kh, kw] as it is: [kh*kw, A, B] compact in memory (the
    strides of size-1 dimensions do not count, so e.g. a contiguous 1x1 weight is taps-major too)."""
    return weight.dim() == 4 and same_layout(weight.shape, weight.stride(), taps_major_strides(weight.shape))


def noting_weight_copy(decision, weight: Tensor, layout: str):
    """``decision`` (a dispatch.Decision), with a note where the Triton kernels will copy ``weight``: it
    is not taps-major (``layout``: what the kernels read, e.g. "[k*k, OC]")."""
    if decision.backend != "triton" or is_taps_major(weight):
        return decision
    note = (f"the weight is not taps-major ({layout} in memory, as the layers allocate it): it is copied to "
            "taps-major per call (one more launch per pass)")
    return replace(decision, reason=f"{decision.reason}; {note}")


def empty_taps_major(shape, *, device=None, dtype: torch.dtype | None = None, allocate=torch.empty) -> Tensor:
    """An uninitialised [A, B, kh, kw] tensor laid out taps-major; ``allocate=_layout.empty`` for a buffer
    a kernel writes."""
    a, b, kh, kw = shape
    return allocate((kh, kw, a, b), device=device, dtype=dtype).permute(2, 3, 0, 1)


def taps_major(weight: Tensor) -> Tensor:
    """``weight`` itself when taps-major, else a taps-major copy of it (one launch)."""
    if is_taps_major(weight):
        return weight
    return empty_taps_major(weight.shape, device=weight.device, dtype=weight.dtype).copy_(weight)


def grad_strides(weight: Tensor | None, shape) -> tuple[int, ...]:
    """The strides of the weight gradient: the weight's own when it is taps-major or contiguous (the
    two layouts the gradient kernels write; size-1 dimensions' strides included, as DDP's buckets
    compare them), so that autograd accumulates it and DDP buckets it without a copy; contiguous for
    any other weight; taps-major without one (the layers' layout)."""
    if weight is None:
        return taps_major_strides(shape)
    if any(same_layout(shape, weight.stride(), layout(shape)) for layout in (taps_major_strides,
                                                                                 contiguous_strides)):
        return tuple(weight.stride())
    return contiguous_strides(shape)


def grad_is_taps_major(weight: Tensor | None, shape) -> bool:
    """Whether ``grad_strides(weight, shape)`` lay the gradient out taps-major (else contiguous)."""
    return same_layout(shape, grad_strides(weight, shape), taps_major_strides(shape))


def empty_grad(weight: Tensor | None, shape, *, device, dtype: torch.dtype) -> Tensor:
    """An uninitialised weight gradient with ``grad_strides`` (allocated through ``_layout.empty``)."""
    strides = grad_strides(weight, shape)
    if same_layout(shape, strides, taps_major_strides(shape)):
        return empty_taps_major(shape, device=device, dtype=dtype, allocate=empty).as_strided(shape, strides)
    return empty(shape, device=device, dtype=dtype).as_strided(shape, strides)


def in_grad_layout(grad: Tensor | None, weight: Tensor) -> Tensor | None:
    """``grad`` (a weight gradient from elsewhere: cuDNN's) with ``grad_strides(weight)``: itself when it
    has them, else a copy."""
    if grad is None or tuple(grad.stride()) == grad_strides(weight, grad.shape):
        return grad
    return empty_grad(weight, grad.shape, device=grad.device, dtype=grad.dtype).copy_(grad)


def relay(param: Tensor) -> None:
    """Lay ``param`` out taps-major in place (a no-op when it already is): ``param.data`` is replaced,
    the Parameter object kept; a gradient it holds follows. Only plain dense tensors are re-laid out: a
    tensor subclass (a DTensor shard under FSDP2, a meta or fake tensor of a tracer) keeps its own layout,
    and the kernels copy it per call if they must."""
    if is_taps_major(param) or type(param.data) is not torch.Tensor or param.device.type == "meta":
        return
    with torch.no_grad():
        param.data = taps_major(param.data)
        if param.grad is not None and not is_taps_major(param.grad):
            param.grad = taps_major(param.grad)


def _relay_after_load(module: nn.Module, incompatible_keys) -> None:
    module.relay_taps_major_weights()


class TapsMajorWeights(nn.Module):
    """A module holding taps-major weights (``taps_major_weights()``) keeps them so: after every
    ``nn.Module._apply`` (``.to``, ``.cuda``, ``.half``, ``.float``, ``to_empty``...) and every
    ``load_state_dict``. Subclasses call ``super().__init__()`` first."""

    def __init__(self):
        super().__init__()
        self.register_load_state_dict_post_hook(_relay_after_load)

    def taps_major_weights(self) -> Iterable[Tensor | None]:
        raise NotImplementedError

    def relay_taps_major_weights(self) -> None:
        for weight in self.taps_major_weights():
            if weight is not None:
                relay(weight)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.relay_taps_major_weights()
        return self
