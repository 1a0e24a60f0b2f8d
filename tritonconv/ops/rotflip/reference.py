"""The 8 transforms of a rotated/flipped filter bank, the bank's expansion, its least-squares projection
from a dense conv, and the float64 oracle."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

TRANSFORMS = 8  # 4 rotations x {as stored, mirrored}


def transform(weight: Tensor, t: int) -> Tensor:
    """Transform ``t = mirror*4 + rotation`` of [..., k, k] kernels: mirror left-right first (if
    ``mirror``), then ``torch.rot90`` counter-clockwise ``rotation`` times over the last two dims."""
    mirror, rotation = divmod(t, 4)
    kernels = weight.flip(-1) if mirror else weight
    return torch.rot90(kernels, rotation, dims=(-2, -1))


def inverse_transform(weight: Tensor, t: int) -> Tensor:
    mirror, rotation = divmod(t, 4)
    kernels = torch.rot90(weight, -rotation, dims=(-2, -1))
    return kernels.flip(-1) if mirror else kernels


def expand_bank(weight: Tensor) -> Tensor:
    """[O/8, C, k, k] stored filters -> the [O, C, k, k] bank, output channel ``o = f*8 + t``."""
    stacked = torch.stack([transform(weight, t) for t in range(TRANSFORMS)], dim=1)  # [O/8, 8, C, k, k]
    return stacked.reshape(weight.shape[0] * TRANSFORMS, *weight.shape[1:])


def project(dense_weight: Tensor) -> Tensor:
    """The stored filters whose expansion is nearest (least squares) to ``dense_weight`` [O, C, k, k]:
    each transform is orthogonal, so it is the mean of the 8 filters mapped back to orientation 0."""
    grouped = dense_weight.reshape(-1, TRANSFORMS, *dense_weight.shape[1:])
    return torch.stack([inverse_transform(grouped[:, t], t) for t in range(TRANSFORMS)]).mean(0)


def reference_forward(x: Tensor, weight: Tensor, bias: Tensor | None, stride: int, padding: int,
                      dilation: int) -> Tensor:
    return F.conv2d(x, expand_bank(weight), bias, stride, padding, dilation)
