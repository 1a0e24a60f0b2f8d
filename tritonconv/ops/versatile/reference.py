"""The published versatile-filter formulation (the fallback): one conv per secondary filter and channel
offset, then ``torch.cat``; the checkpoint loader for the original layout. Also the float64 oracle."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tritonconv.ops.versatile.spec import VersatileSpec, spatial_secondaries


def ring_masks(kernel_size: int, device=None, dtype=None) -> torch.Tensor:
    """[s_num, k, k]: mask s zeroes the outer s rings of the window."""
    idx = torch.arange(kernel_size, device=device)
    depth = torch.minimum(torch.minimum(idx[:, None], idx[None, :]),
                          torch.minimum(kernel_size - 1 - idx[:, None], kernel_size - 1 - idx[None, :]))
    return torch.stack([depth >= s for s in range(spatial_secondaries(kernel_size))]).to(dtype or torch.float32)


def secondary_weights(weight: torch.Tensor) -> torch.Tensor:
    """[s_num * n_w, c_hat, k, k]: the primaries with their outer rings zeroed, largest kernel first."""
    masks = ring_masks(weight.shape[-1], weight.device, weight.dtype)
    return (masks[:, None, None] * weight[None]).flatten(0, 1)


def _secondary(spec: VersatileSpec, s: int) -> tuple[slice, int, int]:
    """Secondary s as the smaller conv it is: the primary's taps [s, k-s) in both directions, with the
    padding reduced by its s dropped rings; where that padding would be negative, the input is cropped
    by the rest. Returns (tap slice, padding, input crop per side). The zeroed rings are never
    multiplied, so a NaN or Inf an output does not read stays out of it."""
    padding = spec.padding - s * spec.dilation
    return slice(s, spec.kernel_size - s), max(padding, 0), max(-padding, 0)


def _cropped(t: torch.Tensor, crop: int) -> torch.Tensor:
    return t[..., crop:t.shape[-2] - crop, crop:t.shape[-1] - crop] if crop else t


def fallback_forward(x, weight, bias, spec: VersatileSpec) -> torch.Tensor:
    """Output channel ``(s*n_c + j)*n_w + f``: secondary s of filter f on channels ``[j*g, j*g + c_hat)``."""
    outs = []
    for s in range(spec.s_num):
        taps, padding, crop = _secondary(spec, s)
        for j in range(spec.n_c):
            window = _cropped(x[:, j * spec.g:j * spec.g + spec.c_hat], crop)
            outs.append(F.conv2d(window, weight[:, :, taps, taps], None, spec.stride, padding, spec.dilation))
    y = torch.cat(outs, dim=1)
    return y + bias[None, :, None, None] if bias is not None else y


def fallback_backward(dy, x, weight, spec: VersatileSpec, need_input: bool, need_weights: bool):
    """(grad input, grad weight, grad bias): cuDNN's backward of every secondary conv, the weight
    gradients of each secondary's taps summed onto the primary."""
    conv_bwd = torch.ops.aten.convolution_backward
    dx = torch.zeros_like(x, memory_format=torch.contiguous_format) if need_input else None
    dw = torch.zeros_like(weight) if need_weights else None
    for s in range(spec.s_num):
        taps, padding, crop = _secondary(spec, s)
        for j in range(spec.n_c):
            first = (s * spec.n_c + j) * spec.n_w
            window = slice(j * spec.g, j * spec.g + spec.c_hat)
            gx, gw, _ = conv_bwd(dy[:, first:first + spec.n_w], _cropped(x[:, window], crop),
                                 weight[:, :, taps, taps].contiguous(), None, [spec.stride] * 2, [padding] * 2,
                                 [spec.dilation] * 2, False, [0, 0], 1, [need_input, need_weights, False])
            if need_input:
                _cropped(dx[:, window], crop).add_(gx)
            if need_weights:
                dw[:, :, taps, taps] += gw
    db = dy.sum((0, 2, 3)) if need_weights and spec.bias else None
    return dx, dw, db


def from_original_weight(weight: torch.Tensor, delta: int) -> torch.Tensor:
    """The original code's ``[n_w, C, k, k]`` weight -> ours ``[n_w, C - delta, k, k]``: the original never
    reads the last ``delta`` input slices, so they are dropped."""
    if weight.dim() != 4:
        raise ValueError(f"weight must have 4 dimensions [n_w, C, k, k], got shape {tuple(weight.shape)}")
    if not 0 <= delta < weight.shape[1]:
        raise ValueError(f"delta={delta} must be in [0, {weight.shape[1]}) for a weight of shape "
                         f"{tuple(weight.shape)}")
    return weight[:, :weight.shape[1] - delta].contiguous()
