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


def fallback_forward(x, weight, bias, spec: VersatileSpec) -> torch.Tensor:
    """Output channel ``(s*n_c + j)*n_w + f``: secondary s of filter f on channels ``[j*g, j*g + c_hat)``."""
    secondaries = secondary_weights(weight).reshape(spec.s_num, spec.n_w, spec.c_hat, spec.kernel_size,
                                                    spec.kernel_size)
    outs = [F.conv2d(x[:, j * spec.g:j * spec.g + spec.c_hat], secondaries[s], None, spec.stride, spec.padding,
                     spec.dilation)
            for s in range(spec.s_num) for j in range(spec.n_c)]
    y = torch.cat(outs, dim=1)
    return y + bias[None, :, None, None] if bias is not None else y


def fallback_backward(dy, x, weight, spec: VersatileSpec, need_input: bool, need_weights: bool):
    """(grad input, grad weight, grad bias): cuDNN's backward of every secondary conv, the weight
    gradients masked to each secondary's taps and summed onto the primary."""
    conv_bwd = torch.ops.aten.convolution_backward
    masks = ring_masks(spec.kernel_size, weight.device, weight.dtype)
    secondaries = secondary_weights(weight).reshape(spec.s_num, spec.n_w, spec.c_hat, spec.kernel_size,
                                                    spec.kernel_size)
    dx = torch.zeros_like(x, memory_format=torch.contiguous_format) if need_input else None
    dw = torch.zeros_like(weight) if need_weights else None
    for s in range(spec.s_num):
        for j in range(spec.n_c):
            first = (s * spec.n_c + j) * spec.n_w
            window = slice(j * spec.g, j * spec.g + spec.c_hat)
            gx, gw, _ = conv_bwd(dy[:, first:first + spec.n_w], x[:, window], secondaries[s], None,
                                 [spec.stride] * 2, [spec.padding] * 2, [spec.dilation] * 2, False, [0, 0], 1,
                                 [need_input, need_weights, False])
            if need_input:
                dx[:, window] += gx
            if need_weights:
                dw += gw * masks[s]
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
