"""Channel shuffle and the published grouped 1 x 1 conv + shuffle (the fallback and the float64 oracle)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tritonconv.ops.shuffle.spec import ShuffleConvSpec


def channel_shuffle_reference(x: torch.Tensor, groups: int) -> torch.Tensor:
    """SPEC section 6 (ShuffleNet's and torchvision's direction)."""
    b, c, h, w = x.shape
    return x.reshape(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


def shuffled_position(channels: int, groups: int, device=None) -> torch.Tensor:
    """pos[n]: where channel n lands after the shuffle."""
    n = torch.arange(channels, device=device)
    per_group = channels // groups
    return (n % per_group) * groups + n // per_group


def fallback_forward(x, weight, bias, spec: ShuffleConvSpec) -> torch.Tensor:
    return channel_shuffle_reference(F.conv2d(x, weight, bias, groups=spec.groups), spec.shuffle_groups)


def fallback_backward(dy, x, weight, spec: ShuffleConvSpec, need_input: bool, need_weights: bool):
    """Un-shuffle the gradient (a pass over memory), then cuDNN's grouped conv backward."""
    unshuffled = dy[:, shuffled_position(spec.out_channels, spec.shuffle_groups, dy.device)]
    return torch.ops.aten.convolution_backward(
        unshuffled, x, weight, [spec.out_channels] if spec.bias else None, [1, 1], [0, 0], [1, 1], False, [0, 0],
        spec.groups, [need_input, need_weights, need_weights and spec.bias])
