"""The correlation-based regulariser that keeps LinearConv's primary filters linearly independent."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tritonconv.ops.linearconv.layer import LinearConv2d
from tritonconv.ops.linearconv.reference import primary_correlation


def correlation_loss(module: nn.Module) -> Tensor:
    """Sum over every LinearConv2d in ``module`` (itself included) of ``sum |clamp(R, -1, 1) - I|``, R the
    Pearson correlation between the rows of ``weight.reshape(P, -1)`` (SPEC section 5).

    Differentiable; add it to the task loss with a weight (the papers use 0.01). A constant primary
    filter correlates 0 with everything (no NaN). A module without LinearConv2d gives a zero scalar.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    terms = []
    for layer in module.modules():
        if isinstance(layer, LinearConv2d):
            r = primary_correlation(layer.weight)
            eye = torch.eye(r.shape[0], device=r.device, dtype=r.dtype)
            terms.append((r.clamp(-1, 1) - eye).abs().sum())
    if not terms:
        param = next(module.parameters(), None)
        return torch.zeros((), device=param.device if param is not None else None)
    return sum(terms[1:], terms[0])  # promotes across layers of different dtypes
