"""DepthwiseSeparableConv2d: depthwise + pointwise fused in one Triton kernel (SPEC section 2)."""

from tritonconv.ops.dwsep.layer import DepthwiseSeparableConv2d
from tritonconv.ops.dwsep.op import OPERATOR, dwsep_conv2d, explain
from tritonconv.ops.dwsep.spec import DwSepSpec

__all__ = ["DepthwiseSeparableConv2d", "DwSepSpec", "OPERATOR", "dwsep_conv2d", "explain"]
