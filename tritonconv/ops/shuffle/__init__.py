"""Channel shuffle at no memory cost: a grouped 1 x 1 conv whose stores write the shuffled positions,
the ShuffleNet V1 unit built on it, and the standalone ``channel_shuffle``."""

from tritonconv.ops.shuffle.layer import ShuffledGroupConv2d, ShuffleUnit
from tritonconv.ops.shuffle.op import OPERATOR, channel_shuffle, explain, shuffle_conv1x1
from tritonconv.ops.shuffle.spec import ShuffleConvSpec

__all__ = ["OPERATOR", "ShuffleConvSpec", "ShuffleUnit", "ShuffledGroupConv2d", "channel_shuffle", "explain",
           "shuffle_conv1x1"]
