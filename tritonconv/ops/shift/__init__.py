"""ShiftConv2d: the ShiftNet shift folded into the 1 x 1 convolution's load addresses."""

from tritonconv.ops.shift.layer import ShiftConv2d
from tritonconv.ops.shift.op import OPERATOR, explain, shift_conv2d
from tritonconv.ops.shift.spec import ShiftSpec

__all__ = ["OPERATOR", "ShiftConv2d", "ShiftSpec", "explain", "shift_conv2d"]
