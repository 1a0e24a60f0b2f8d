"""The depthwise conv through cuDNN (``F.conv2d(groups=C)``): the fallback and the float64 oracle."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tritonconv.ops.depthwise.spec import DepthwiseSpec


def apply_activation(z: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "relu":
        return F.relu(z)
    if activation == "relu6":
        return F.relu6(z)
    return z


def depthwise(x, weight, bias, spec: DepthwiseSpec) -> torch.Tensor:
    """act(conv(x, weight, groups=C) + bias): the maps only (``out_channels`` of them)."""
    full = spec.in_channels * spec.multiplier
    if weight.shape[0] < full:
        # The Ghost module keeps only the first maps: pad the filters so groups=C applies, then drop.
        weight = torch.cat([weight, weight.new_zeros(full - weight.shape[0], *weight.shape[1:])])
        bias = torch.cat([bias, bias.new_zeros(full - bias.shape[0])]) if bias is not None else None
    z = F.conv2d(x, weight, bias, spec.stride, spec.padding, spec.dilation, groups=spec.in_channels)
    return apply_activation(z[:, :spec.out_channels], spec.activation)


def fallback_forward(x, weight, bias, spec: DepthwiseSpec) -> torch.Tensor:
    """The op's output: the maps, after the input when ``concat_input`` (the Ghost module's torch.cat)."""
    maps = depthwise(x, weight, bias, spec)
    return torch.cat([x, maps], 1) if spec.concat_input else maps


def fallback_backward(dy, x, weight, bias, spec: DepthwiseSpec, need_input: bool, need_weights: bool):
    """(dx, dweight, dbias) of ``fallback_forward`` through cuDNN's backward; unneeded ones are None."""
    with torch.enable_grad():
        x_ = x.detach().requires_grad_(need_input)
        w_ = weight.detach().requires_grad_(need_weights)
        b_ = bias.detach().requires_grad_(need_weights) if bias is not None else None
        wanted = [t for t, need in ((x_, need_input), (w_, need_weights), (b_, need_weights))
                  if need and t is not None]
        grads = iter(torch.autograd.grad(fallback_forward(x_, w_, b_, spec), wanted, dy) if wanted else ())
    dx = next(grads) if need_input else None
    dw = next(grads) if need_weights else None
    db = next(grads) if need_weights and bias is not None else None
    return dx, dw, db
