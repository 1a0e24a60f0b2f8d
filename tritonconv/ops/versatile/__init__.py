"""VersatileConv2d: every spatial and channel secondary of a filter from one read of its window."""

from tritonconv.ops.versatile.layer import VersatileConv2d
from tritonconv.ops.versatile.op import OPERATOR, explain, versatile_conv2d
from tritonconv.ops.versatile.spec import VersatileSpec

__all__ = ["OPERATOR", "VersatileConv2d", "VersatileSpec", "explain", "versatile_conv2d"]
