"""RotFlipConv2d: 8 feature maps per stored filter (4 rotations x mirror), run as one dense conv."""

from tritonconv.ops.rotflip.layer import RotFlipConv2d

__all__ = ["RotFlipConv2d"]
