"""Depthwise-separable and Ghost layers of real networks, as the tuner's and the perf suite's shape sets.

Each function walks the network's own definition (torchvision's MobileNetV2, the official GhostNet
code, torchvision's EfficientNet-B0) at a square input and lists, in order, the layers our operators
replace.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# torchvision MobileNetV2 inverted residual settings: expansion t, output channels c, repeats n, stride s.
MOBILENET_V2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                         (6, 160, 3, 2), (6, 320, 1, 1))

# torchvision EfficientNet-B0 MBConv stages: expansion, kernel, stride, input channels, output channels, repeats.
EFFICIENTNET_B0_STAGES = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
                          (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1))

# Official GhostNet 1.0x bottlenecks per stage: (dw kernel k, expansion size, output channels, SE ratio, stride).
GHOSTNET_CONFIG = (
    ((3, 16, 16, 0, 1),),
    ((3, 48, 24, 0, 2),), ((3, 72, 24, 0, 1),),
    ((5, 72, 40, 0.25, 2),), ((5, 120, 40, 0.25, 1),),
    ((3, 240, 80, 0, 2),),
    ((3, 200, 80, 0, 1), (3, 184, 80, 0, 1), (3, 184, 80, 0, 1), (3, 480, 112, 0.25, 1), (3, 672, 112, 0.25, 1)),
    ((5, 672, 160, 0.25, 2),),
    ((5, 960, 160, 0, 1), (5, 960, 160, 0.25, 1), (5, 960, 160, 0, 1), (5, 960, 160, 0.25, 1)),
)


@dataclass(frozen=True)
class SeparableLayer:
    """A depthwise conv (``in_channels``, k, stride) at an input of height x width, followed by a 1 x 1
    conv to ``out_channels`` (``out_channels=None``: no pointwise conv follows)."""

    name: str
    in_channels: int
    out_channels: int | None
    kernel_size: int
    stride: int
    height: int
    width: int
    activation: str = "none"
    out_activation: str = "none"


@dataclass(frozen=True)
class GhostLayer:
    name: str
    in_channels: int
    out_channels: int
    height: int  # the module's input (and, stride 1, output) size
    width: int
    kernel_size: int = 1
    ratio: int = 2
    dw_size: int = 3
    relu: bool = True

    @property
    def init_channels(self) -> int:
        return math.ceil(self.out_channels / self.ratio)


def _make_divisible(value: float, divisor: int) -> int:
    """torchvision's and GhostNet's channel rounding."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * value else new


def _after(size: int, stride: int) -> int:
    return (size - 1) // stride + 1


def mobilenet_v2(resolution: int = 224, width_mult: float = 1.0) -> list[SeparableLayer]:
    """Every depthwise 3x3 + pointwise-project pair of MobileNetV2 (ReLU6 between them, linear output)."""
    layers, channels, size = [], _make_divisible(32 * width_mult, 8), _after(resolution, 2)  # stem: stride 2
    for t, c, n, s in MOBILENET_V2_SETTINGS:
        out = _make_divisible(c * width_mult, 8)
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = channels * t
            layers.append(SeparableLayer(f"features.{len(layers) + 1}_{size}px", hidden, out, 3, stride, size, size,
                                         "relu6", "none"))
            channels, size = out, _after(size, stride)
    return layers


def efficientnet_b0(resolution: int = 224) -> list[SeparableLayer]:
    """The depthwise conv and the 1 x 1 projection of every MBConv block of EfficientNet-B0 (16 blocks,
    9 of them with 5 x 5 depthwise filters), as shapes: in the network a squeeze-and-excitation block
    sits between the two and the depthwise conv's activation is SiLU, which the kernels do not fuse,
    so the layers carry none."""
    layers, size = [], _after(resolution, 2)  # stem: 3x3 stride 2 to 32 channels
    for stage, (expansion, k, s, in_channels, out, repeats) in enumerate(EFFICIENTNET_B0_STAGES, start=1):
        for i in range(repeats):
            stride = s if i == 0 else 1
            hidden = (in_channels if i == 0 else out) * expansion
            # torchvision's module path: features[stage][i].block
            layers.append(SeparableLayer(f"features.{stage}.{i}_k{k}_{size}px", hidden, out, k, stride, size, size))
            size = _after(size, stride)
    return layers


def _ghostnet_blocks(resolution: int, width: float):
    """(name, in, mid, out, k, stride, input size) of every GhostBottleneck."""
    channels, size, index = _make_divisible(16 * width, 4), _after(resolution, 2), 0  # conv_stem: stride 2
    for stage in GHOSTNET_CONFIG:
        for k, expansion, c, _, stride in stage:
            out, mid = _make_divisible(c * width, 4), _make_divisible(expansion * width, 4)
            yield f"blocks.{index}", channels, mid, out, k, stride, size
            channels, size, index = out, _after(size, stride), index + 1


def ghostnet_ghost_modules(resolution: int = 224, width: float = 1.0) -> list[GhostLayer]:
    """Both GhostModules of every GhostNet bottleneck (ghost1 with ReLU, ghost2 without)."""
    layers = []
    for name, in_chs, mid, out, _, stride, size in _ghostnet_blocks(resolution, width):
        layers.append(GhostLayer(f"{name}.ghost1_{size}px", in_chs, mid, size, size, relu=True))
        after = _after(size, stride)
        layers.append(GhostLayer(f"{name}.ghost2_{after}px", mid, out, after, after, relu=False))
    return layers


def ghostnet_separable(resolution: int = 224, width: float = 1.0) -> list[SeparableLayer]:
    """GhostNet's other depthwise convs: the stride-2 ``conv_dw`` (no pointwise follows) and the
    shortcut's depthwise + 1 x 1 pair (BN between, no activation)."""
    layers = []
    for name, in_chs, mid, out, k, stride, size in _ghostnet_blocks(resolution, width):
        if stride > 1:
            layers.append(SeparableLayer(f"{name}.conv_dw_{size}px", mid, None, k, stride, size, size))
        if in_chs != out or stride > 1:
            layers.append(SeparableLayer(f"{name}.shortcut_{size}px", in_chs, out, k, stride, size, size))
    return layers


def unique(layers: list) -> list[tuple[object, int]]:
    """Distinct shapes (names aside) with how many times each occurs, in first-seen order."""
    seen: dict[tuple, list] = {}
    for layer in layers:
        key = tuple(v for k, v in vars(layer).items() if k != "name")
        seen.setdefault(key, [layer, 0])[1] += 1
    return [(layer, count) for layer, count in seen.values()]
