"""Shift networks' shift + 1 x 1 layers, as ``ConvLayer`` shape lists for the tuner and perf suite.

``kernel_size`` is the shift's k; ``in_channels`` are the channels that are shifted (the CSC module's
expanded middle), ``stride`` the 1 x 1 conv's, height and width the input's.
"""

from __future__ import annotations

from tritonconv.zoo import ConvLayer, resnet50

# ShiftResNet-20 on CIFAR (ShiftNet, CVPR 2018): 3 stages x 3 blocks, 16/32/64 channels at 32/16/8 px.
SHIFTRESNET20_STAGES = ((16, 3), (32, 3), (64, 3))


def shiftresnet20(expansion: int = 1, resolution: int = 32) -> list[ConvLayer]:
    """Every CSC module (1 x 1 expand -> shift -> 1 x 1) of ShiftResNet-20: each block's two 3 x 3
    convs are CSC modules; the first of stages 2 and 3 downsamples in its last 1 x 1 (after the shift)."""
    layers, in_channels, size = [], 16, resolution  # after the 3 -> 16 stem conv
    for stage, (width, blocks) in enumerate(SHIFTRESNET20_STAGES, start=1):
        for block in range(blocks):
            stride = 2 if stage > 1 and block == 0 else 1
            for conv, (cin, s) in enumerate(((in_channels, stride), (width, 1)), start=1):
                name = f"layer{stage}.{block}.csc{conv}"
                layers.append(ConvLayer(name, cin * expansion, width, 3, s, size, size))
                size = (size - 1) // s + 1
            in_channels = width
    return layers


def resnet50_shift(resolution: int = 224) -> list[ConvLayer]:
    """ResNet-50's bottleneck 3 x 3 convs replaced by shift + 1 x 1 (same channels, stride, input size)."""
    return resnet50(resolution)
