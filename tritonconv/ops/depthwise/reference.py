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


def activation_backward(grad: torch.Tensor, z: torch.Tensor, activation: str) -> torch.Tensor:
    """The gradient through the activation at pre-activation z (torch's own backward ops)."""
    if activation == "relu":
        return torch.ops.aten.threshold_backward(grad, z, 0)
    if activation == "relu6":
        return torch.ops.aten.hardtanh_backward(grad, z, 0, 6)
    return grad


def _full_filters(weight, bias, spec: DepthwiseSpec):
    """The Ghost module keeps only the first maps: pad the filters with zeros so groups=C applies."""
    missing = spec.in_channels * spec.multiplier - weight.shape[0]
    if missing:
        weight = torch.cat([weight, weight.new_zeros(missing, *weight.shape[1:])])
        bias = torch.cat([bias, bias.new_zeros(missing)]) if bias is not None else None
    return weight, bias


def pre_activation(x, weight, bias, spec: DepthwiseSpec) -> torch.Tensor:
    """conv(x, weight, groups=C) + bias over all C*multiplier filters (padded ones included)."""
    weight, bias = _full_filters(weight, bias, spec)
    return F.conv2d(x, weight, bias, spec.stride, spec.padding, spec.dilation, groups=spec.in_channels)


def depthwise(x, weight, bias, spec: DepthwiseSpec) -> torch.Tensor:
    """act(conv(x, weight, groups=C) + bias): the maps only (``out_channels`` of them)."""
    return apply_activation(pre_activation(x, weight, bias, spec)[:, :spec.out_channels], spec.activation)


def fallback_forward(x, weight, bias, spec: DepthwiseSpec) -> torch.Tensor:
    """The op's output: the maps, after the input when ``concat_input`` (the Ghost module's torch.cat)."""
    maps = depthwise(x, weight, bias, spec)
    return torch.cat([x, maps], 1) if spec.concat_input else maps


def fallback_backward(dy, x, weight, bias, spec: DepthwiseSpec, need_input: bool, need_weights: bool):
    """(dx, dweight, dbias) of ``fallback_forward`` through cuDNN's backward; unneeded ones are None.

    Written with explicit backward ops, not autograd: it runs inside a custom op, below autograd.
    """
    channels = spec.in_channels if spec.concat_input else 0
    z = pre_activation(x, weight, bias, spec)
    dz = torch.zeros_like(z)
    dz[:, :spec.out_channels] = activation_backward(dy[:, channels:], z[:, :spec.out_channels], spec.activation)
    full_weight, _ = _full_filters(weight, bias, spec)
    dx, dw, db = torch.ops.aten.convolution_backward(
        dz, x, full_weight, [full_weight.shape[0]] if bias is not None else None, [spec.stride] * 2,
        [spec.padding] * 2, [spec.dilation] * 2, False, [0, 0], spec.in_channels,
        [need_input, need_weights, need_weights and bias is not None])
    if dx is not None and spec.concat_input:
        dx = dx + dy[:, :channels]
    rows = spec.out_channels
    return dx, dw[:rows] if dw is not None else None, db[:rows] if db is not None else None
