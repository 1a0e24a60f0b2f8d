"""The published ShiftNet formulation (the fallback): materialise the shifted tensor, then a 1 x 1 conv
through cuDNN. Also the float64 test oracle."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tritonconv.ops.shift.spec import ShiftSpec, channel_shifts


def shift(x: torch.Tensor, kernel_size: int, dilation: int, assignment: str, inverse: bool = False) -> torch.Tensor:
    """``s[b, c, h, w] = x[b, c, h + dh_c, w + dw_c]``, zero outside the image (``inverse``: the opposite
    shift, which is the shift's backward)."""
    pad = dilation * (kernel_size // 2)
    padded = F.pad(x, (pad, pad, pad, pad))
    height, width = x.shape[2:]
    sign = -1 if inverse else 1
    by_shift: dict[tuple[int, int], list[int]] = {}
    for c, (dh, dw) in enumerate(channel_shifts(x.shape[1], kernel_size, dilation, assignment)):
        by_shift.setdefault((sign * dh, sign * dw), []).append(c)
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    for (dh, dw), channels in by_shift.items():
        index = torch.tensor(channels, device=x.device)
        out[:, index] = padded[:, index, pad + dh:pad + dh + height, pad + dw:pad + dw + width]
    return out


def fallback_forward(x, weight, bias, spec: ShiftSpec) -> torch.Tensor:
    return F.conv2d(shift(x, spec.kernel_size, spec.dilation, spec.assignment), weight, bias, spec.stride)


def fallback_backward(dy, x, weight, spec: ShiftSpec, need_input: bool, need_weights: bool):
    """(grad input, grad weight, grad bias): the 1 x 1 conv's cuDNN backward, then the opposite shift."""
    shifted = shift(x, spec.kernel_size, spec.dilation, spec.assignment)
    ds, dw, db = torch.ops.aten.convolution_backward(
        dy, shifted, weight, [spec.out_channels] if spec.bias else None, [spec.stride] * 2, [0, 0], [1, 1], False,
        [0, 0], 1, [need_input, need_weights, need_weights and spec.bias])
    dx = shift(ds, spec.kernel_size, spec.dilation, spec.assignment, inverse=True) if need_input else None
    return dx, dw, db
