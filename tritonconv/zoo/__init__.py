"""The layers of real networks, as the tuner's, the perf suite's and the audit's shape sets: every shape
set of every operator is here.

Each function walks the network's own definition and lists its layers in order; an adapter turns the
ones its layer can replace into specs. This module: the plain convolutions (VGG-16, ResNet-50);
``separable``: depthwise, depthwise-separable and Ghost layers (MobileNetV2, GhostNet, EfficientNet-B0);
``shift``: shift + 1 x 1 layers (ShiftResNet-20); ``shuffle``: grouped 1 x 1 convs (ShuffleNet V1).
"""

from __future__ import annotations

from dataclasses import dataclass

# VGG-16's convolutions (output channels) and 2 x 2 max pools ("M"); ``models`` builds from it too.
VGG16_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


@dataclass(frozen=True)
class ConvLayer:
    name: str
    in_channels: int
    out_channels: int
    kernel_size: int
    stride: int
    height: int  # input height and width
    width: int
    groups: int = 1


def vgg16(resolution: int) -> list[ConvLayer]:
    """VGG-16's 13 convolutions (3x3, stride 1) at a square input of ``resolution``."""
    layers, in_channels, size = [], 3, resolution
    for item in VGG16_CONFIG:
        if item == "M":
            size //= 2
            continue
        layers.append(ConvLayer(f"conv{len(layers) + 1}_{size}px", in_channels, item, 3, 1, size, size))
        in_channels = item
    return layers


# torchvision ResNet-50 (v1.5: the stride sits on the bottleneck's 3x3 conv): (width, blocks).
RESNET50_STAGES = ((64, 3), (128, 4), (256, 6), (512, 3))


def resnet50(resolution: int = 224) -> list[ConvLayer]:
    """The 16 bottleneck 3x3 convolutions of ResNet-50 at a square input of ``resolution``."""
    layers, size = [], resolution // 4  # after the stem's stride-2 conv and max-pool
    for stage, (width, blocks) in enumerate(RESNET50_STAGES, start=1):
        for block in range(blocks):
            stride = 2 if stage > 1 and block == 0 else 1
            layers.append(ConvLayer(f"layer{stage}.{block}.conv2", width, width, 3, stride, size, size))
            size = (size - 1) // stride + 1
    return layers


def unique(layers: list[ConvLayer]) -> list[tuple[ConvLayer, int]]:
    """Distinct shapes (names aside) with how many times each occurs, in first-seen order."""
    seen: dict[tuple, list] = {}
    for layer in layers:
        key = (layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.height, layer.width,
               layer.groups)
        seen.setdefault(key, [layer, 0])[1] += 1
    return [(layer, count) for layer, count in seen.values()]
