"""LinearConv2d: primary filters plus linear combinations of them, run as one dense conv."""

from tritonconv.ops.linearconv.layer import LinearConv2d
from tritonconv.ops.linearconv.regularization import correlation_loss
from tritonconv.ops.linearconv.spec import VARIANTS, LinearConvSpec

__all__ = ["LinearConv2d", "LinearConvSpec", "VARIANTS", "correlation_loss"]
