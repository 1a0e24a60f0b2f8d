"""Depthwise convolution (standalone, and the Ghost module's cheap operation) as direct Triton kernels."""

from tritonconv.ops.depthwise.layer import DepthwiseConv2d
from tritonconv.ops.depthwise.op import OPERATOR, depthwise_conv2d, explain, ghost_concat
from tritonconv.ops.depthwise.spec import DepthwiseSpec

__all__ = ["DepthwiseConv2d", "DepthwiseSpec", "OPERATOR", "depthwise_conv2d", "explain", "ghost_concat"]
