"""Reference models built from tritonconv layers."""

from __future__ import annotations

from torch import nn

from tritonconv.ops.hetconv import HetConv2d
from tritonconv.zoo import VGG16_CONFIG


def vgg16_cifar(p: int = 4, num_classes: int = 10) -> nn.Sequential:
    """VGG-16 for 32x32 CIFAR-10 with HetConv(p) in every conv but the first (SPEC section 1).

    The first conv (3 -> 64) is an ordinary conv with bias; the other 12 are ``HetConv2d(p)`` without
    bias; each conv is followed by BatchNorm2d and ReLU. Classifier: Linear(512, 512), BatchNorm1d,
    ReLU, Linear(512, num_classes). Conv + linear MACs: 2,036,736 + 34,603,008 * (1 + 8/p).
    """
    layers: list[nn.Module] = []
    in_channels = 3
    for item in VGG16_CONFIG:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
            continue
        conv = (nn.Conv2d(in_channels, item, 3, padding=1, bias=True) if in_channels == 3
                else HetConv2d(in_channels, item, 3, p=p, bias=False))
        layers += [conv, nn.BatchNorm2d(item), nn.ReLU(inplace=True)]
        in_channels = item
    layers += [nn.Flatten(), nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True),
               nn.Linear(512, num_classes)]
    return nn.Sequential(*layers)
