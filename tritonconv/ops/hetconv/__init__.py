"""HetConv2d: heterogeneous k x k / 1 x 1 kernels in one direct implicit-GEMM kernel."""

from tritonconv.ops.hetconv.layer import HetConv2d
from tritonconv.ops.hetconv.op import OPERATOR, explain, hetconv2d
from tritonconv.ops.hetconv.spec import HetConvSpec

__all__ = ["HetConv2d", "HetConvSpec", "OPERATOR", "explain", "hetconv2d"]
