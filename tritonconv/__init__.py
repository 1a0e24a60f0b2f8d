"""tritonconv: compact convolutions as direct Triton kernels, dispatched against cuDNN per shape."""

from tritonconv import models
from tritonconv.accounting import Cost, count_macs
from tritonconv.dispatch import BackendUnavailable, Decision, use_backend
from tritonconv.ops.depthwise import DepthwiseConv2d, DepthwiseSpec, depthwise_conv2d
from tritonconv.ops.dwsep import DepthwiseSeparableConv2d, DwSepSpec, dwsep_conv2d
from tritonconv.ops.ghost import GhostModule
from tritonconv.ops.hetconv import HetConv2d, HetConvSpec, hetconv2d

__all__ = ["BackendUnavailable", "Cost", "Decision", "DepthwiseConv2d", "DepthwiseSeparableConv2d", "DepthwiseSpec",
           "DwSepSpec", "GhostModule", "HetConv2d", "HetConvSpec", "count_macs", "depthwise_conv2d", "dwsep_conv2d",
           "explain", "hetconv2d", "models", "use_backend"]


def explain(layer, x, pass_: str = "forward") -> Decision:
    """Which backend ``layer(x)`` (``pass_="backward"``: its backward) takes, and why."""
    return layer.explain(x, pass_)
