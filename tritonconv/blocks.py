"""A catalogue of the compact-network blocks from the survey, in plain torch modules.

Each block keeps its network's own submodule names, so published checkpoints load. The dense k x k
convs inside them (Fire's 3x3 expand, a GhostModule's primary conv when k > 1) are nn.Conv2d:
``tritonconv.convert(block, to=LinearConv2d | RotFlipConv2d | HetConv2d, filter_fn=...)`` puts our
layers in their place. Depthwise, shift and Ghost parts are torch here; tritonconv's own
DepthwiseSeparableConv2d, ShiftConv2d and GhostModule are the kernel-backed versions of those parts.

Parameter counts and MACs (``tritonconv.count_macs``) follow from the modules; the tests check them
against the closed forms in each docstring (biases, BN and activations are not MACs).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tritonconv._validation import check_positive_int


class Fire(nn.Module):
    """SqueezeNet's fire module: 1x1 squeeze (+ReLU), then 1x1 and 3x3 (padding 1) expands (+ReLU each),
    concatenated [expand1x1, expand3x3]. All convs have biases; torchvision's submodule names.

    Params ``C*s + s + s*e1 + e1 + 9*s*e3 + e3`` (12,432 for 128 in, squeeze 16, expand 64+64).
    MACs ``H*W*(C*s + s*e1 + 9*s*e3)``.
    """

    def __init__(self, in_channels: int, squeeze: int, expand1x1: int, expand3x3: int):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("squeeze", squeeze), ("expand1x1", expand1x1),
                            ("expand3x3", expand3x3)):
            check_positive_int(name, value)
        self.squeeze = nn.Conv2d(in_channels, squeeze, 1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, 1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, 3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat([self.expand1x1_activation(self.expand1x1(x)),
                          self.expand3x3_activation(self.expand3x3(x))], 1)


class MobileNetV1Block(nn.Module):
    """MobileNet V1: depthwise k x k (stride, padding k//2) + BN + ReLU, pointwise 1x1 + BN + ReLU; no biases.

    Params ``C*k^2 + 2C + C*N + 2N``; MACs ``Ho*Wo*C*(k^2 + N)``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, kernel_size: int = 3):
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("out_channels", out_channels)
        check_positive_int("stride", stride)
        check_positive_int("kernel_size", kernel_size)
        self.dw = nn.Conv2d(in_channels, in_channels, kernel_size, stride, kernel_size // 2, groups=in_channels,
                            bias=False)
        self.bn_dw = nn.BatchNorm2d(in_channels)
        self.pw = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn_pw = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn_dw(self.dw(x)))
        return F.relu(self.bn_pw(self.pw(x)))


class InvertedResidual(nn.Module):
    """MobileNet V2 (torchvision's layout, ``conv`` Sequential): 1x1 expand to ``hidden =
    round(C*expand_ratio)`` + BN + ReLU6 (absent when expand_ratio == 1), depthwise 3x3 (stride) + BN +
    ReLU6, 1x1 project + BN (linear); residual when stride == 1 and C == N. No biases.

    Params ``[C*h + 2h] + 9h + 2h + h*N + 2N``; MACs ``[H*W*C*h] + Ho*Wo*h*(9 + N)``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, expand_ratio: float = 6):
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("out_channels", out_channels)
        if stride not in (1, 2):
            raise ValueError(f"stride={stride!r} must be 1 or 2")
        if isinstance(expand_ratio, bool) or not isinstance(expand_ratio, (int, float)) or expand_ratio < 1:
            raise ValueError(f"expand_ratio={expand_ratio!r} must be a number >= 1")
        hidden = int(round(in_channels * expand_ratio))
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += [nn.Conv2d(in_channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
                   nn.ReLU6(inplace=True), nn.Conv2d(hidden, out_channels, 1, bias=False),
                   nn.BatchNorm2d(out_channels)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


def shift(x: Tensor, kernel_size: int = 3, dilation: int = 1) -> Tensor:
    """ShiftNet's shift, interleaved assignment (SPEC section 3): with ``R = (C // k^2) * k^2``, channel
    ``c < R`` moves by ``dw = d*((c mod k) - k//2)``, ``dh = d*(((c // k) mod k) - k//2)``,
    ``s[b,c,h,w] = x[b,c,h+dh,w+dw]`` with zeros outside; channels ``c >= R`` stay. Plain torch: one
    copy per direction (ShiftConv2d is the version that costs no pass over memory)."""
    channels, height, width = x.shape[1:]
    pad = dilation * (kernel_size // 2)
    padded = F.pad(x, (pad, pad, pad, pad))
    out = x.clone()
    shifted = torch.arange((channels // kernel_size**2) * kernel_size**2, device=x.device)
    for row in range(kernel_size):
        for col in range(kernel_size):
            index = shifted[(shifted % kernel_size == col) & ((shifted // kernel_size) % kernel_size == row)]
            top, left = pad + dilation * (row - kernel_size // 2), pad + dilation * (col - kernel_size // 2)
            out[:, index] = padded[:, index, top:top + height, left:left + width]
    return out


class Shift(nn.Module):
    """``shift`` as a module: zero parameters, zero MACs."""

    def __init__(self, kernel_size: int = 3, dilation: int = 1):
        super().__init__()
        check_positive_int("kernel_size", kernel_size)
        check_positive_int("dilation", dilation)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size={kernel_size} must be odd (shifts are centred)")
        self.kernel_size, self.dilation = kernel_size, dilation

    def forward(self, x: Tensor) -> Tensor:
        return shift(x, self.kernel_size, self.dilation)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, dilation={self.dilation}"


class CSCBlock(nn.Module):
    """ShiftNet's Conv-Shift-Conv residual block: 1x1 conv to ``mid = int(N*expansion)`` + BN + ReLU,
    shift, 1x1 conv (stride) to N + BN, plus the shortcut (identity, or 1x1 conv with the stride + BN
    when the shape changes), then ReLU. No biases.

    Params ``C*m + 2m + m*N + 2N`` (+ ``C*N + 2N`` projection); MACs ``H*W*C*m + Ho*Wo*m*N``
    (+ ``Ho*Wo*C*N``).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, expansion: float = 1,
                 kernel_size: int = 3, dilation: int = 1):
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("out_channels", out_channels)
        check_positive_int("stride", stride)
        if isinstance(expansion, bool) or not isinstance(expansion, (int, float)) or int(out_channels * expansion) < 1:
            raise ValueError(f"expansion={expansion!r} must be a number with int(out_channels*expansion) >= 1")
        mid = int(out_channels * expansion)
        self.conv1 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.shift = Shift(kernel_size, dilation)
        self.conv2 = nn.Conv2d(mid, out_channels, 1, stride, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        y = self.shift(F.relu(self.bn1(self.conv1(x))))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class GhostModule(nn.Module):
    """GhostNet's Ghost module (SPEC section 6), plain torch: ``m = ceil(out/ratio)`` intrinsic maps from a
    k x k conv (stride, padding k//2) + BN (+ReLU), ``m*(ratio-1)`` ghost maps from a depthwise
    ``dw_size`` conv of them (channel multiplier ratio-1) + BN (+ReLU), output ``cat(...)[:, :out]``.
    GhostNet's submodule names (``primary_conv``, ``cheap_operation``); no biases.

    Params ``m*C*k^2 + 2m + m*(ratio-1)*(dw^2 + 2)``; MACs ``Ho*Wo*m*(C*k^2 + (ratio-1)*dw^2)``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, ratio: int = 2, dw_size: int = 3,
                 stride: int = 1, relu: bool = True):
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("out_channels", out_channels)
        check_positive_int("kernel_size", kernel_size)
        check_positive_int("ratio", ratio, minimum=2)
        check_positive_int("dw_size", dw_size)
        check_positive_int("stride", stride)
        self.out_channels = out_channels
        intrinsic = math.ceil(out_channels / ratio)
        ghost = intrinsic * (ratio - 1)
        act = (lambda: nn.ReLU(inplace=True)) if relu else nn.Identity
        self.primary_conv = nn.Sequential(
            nn.Conv2d(in_channels, intrinsic, kernel_size, stride, kernel_size // 2, bias=False),
            nn.BatchNorm2d(intrinsic), act())
        self.cheap_operation = nn.Sequential(
            nn.Conv2d(intrinsic, ghost, dw_size, 1, dw_size // 2, groups=intrinsic, bias=False),
            nn.BatchNorm2d(ghost), act())

    def forward(self, x: Tensor) -> Tensor:
        intrinsic = self.primary_conv(x)
        return torch.cat([intrinsic, self.cheap_operation(intrinsic)], 1)[:, :self.out_channels]


def _make_divisible(value: float, divisor: int) -> int:
    """GhostNet's channel rounding: nearest multiple of ``divisor``, never more than 10% below ``value``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class SqueezeExcite(nn.Module):
    """GhostNet's squeeze-and-excite: global average pool, 1x1 conv to ``_make_divisible(C*se_ratio, 4)``
    (+bias) + ReLU, 1x1 conv back (+bias), hard-sigmoid gate ``relu6(z + 3) / 6``."""

    def __init__(self, channels: int, se_ratio: float = 0.25):
        super().__init__()
        reduced = _make_divisible(channels * se_ratio, 4)
        self.conv_reduce = nn.Conv2d(channels, reduced, 1)
        self.conv_expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        gate = self.conv_expand(F.relu(self.conv_reduce(x.mean((2, 3), keepdim=True))))
        return x * (F.relu6(gate + 3) / 6)


class GhostBottleneck(nn.Module):
    """GhostNet's bottleneck: GhostModule(C -> mid, ReLU), then for stride 2 a depthwise
    ``dw_kernel_size`` conv (stride) + BN, optional SqueezeExcite (``se_ratio > 0``), GhostModule(mid -> N,
    no ReLU), plus the shortcut: identity when stride == 1 and C == N, else depthwise
    ``dw_kernel_size`` conv (stride) + BN + 1x1 conv to N + BN. GhostNet's submodule names."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, dw_kernel_size: int = 3,
                 stride: int = 1, se_ratio: float = 0.0):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride={stride!r} must be 1 or 2")
        if isinstance(se_ratio, bool) or not isinstance(se_ratio, (int, float)) or se_ratio < 0:
            raise ValueError(f"se_ratio={se_ratio!r} must be a number >= 0 (0: no squeeze-and-excite)")
        check_positive_int("dw_kernel_size", dw_kernel_size)
        self.stride = stride
        pad = (dw_kernel_size - 1) // 2
        self.ghost1 = GhostModule(in_channels, mid_channels, relu=True)
        if stride > 1:
            self.conv_dw = nn.Conv2d(mid_channels, mid_channels, dw_kernel_size, stride, pad, groups=mid_channels,
                                     bias=False)
            self.bn_dw = nn.BatchNorm2d(mid_channels)
        self.se = SqueezeExcite(mid_channels, se_ratio) if se_ratio > 0 else None
        self.ghost2 = GhostModule(mid_channels, out_channels, relu=False)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, in_channels, dw_kernel_size, stride, pad, groups=in_channels, bias=False),
                nn.BatchNorm2d(in_channels), nn.Conv2d(in_channels, out_channels, 1, bias=False),
                nn.BatchNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        y = self.ghost1(x)
        if self.stride > 1:
            y = self.bn_dw(self.conv_dw(y))
        if self.se is not None:
            y = self.se(y)
        return self.ghost2(y) + self.shortcut(x)
