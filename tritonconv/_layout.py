"""Memory layout and autocast helpers shared by every operator."""

from __future__ import annotations

import torch
from torch import Tensor


def memory_format_of(x: Tensor) -> torch.memory_format:
    """channels_last for an NHWC-strided 4-D tensor (that is not also plain contiguous), else contiguous."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def empty_like_layout(shape, like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """An uninitialised tensor of ``shape`` in ``like``'s memory layout (outputs follow their input)."""
    return torch.empty(shape, device=like.device, dtype=dtype or like.dtype, memory_format=memory_format_of(like))


def autocast_operands(x: Tensor, *params):
    """Custom ops are invisible to autocast: layers cast here, as autocast would for a conv."""
    if not isinstance(x, Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
        return (x.to(dtype), *(t.to(dtype) if t is not None else None for t in params))
    return (x, *params)
