"""The depthwise weight's layout: taps-major (``tritonconv._weights``), the one the kernels read without a
copy.

A depthwise weight is [OC, 1, k, k] (``nn.Conv2d(..., groups=C).weight``'s shape, and so the state_dict's).
The kernels read each tap's OC filters with one vector load, so they want it [k*k, OC] in memory:
strides (1, 1, k*OC, OC), the taps-major layout of ``_weights`` with B = 1. The layers
(``DepthwiseConv2d``, ``DepthwiseSeparableConv2d.dw_weight``, ``GhostModule``'s cheap operation) name
their depthwise weights (``depthwise_weights()``) and ``TapsMajorWeights`` keeps them taps-major.
"""

from __future__ import annotations

from typing import Iterable

from torch import Tensor

from tritonconv import _weights
from tritonconv._weights import (  # noqa: F401  (the depthwise operator's names for the shared helpers)
    empty_grad,
    empty_taps_major,
    grad_strides,
    in_grad_layout,
    is_taps_major,
    relay,
    taps_major,
    taps_major_strides,
)


class TapsMajorWeights(_weights.TapsMajorWeights):
    """``_weights.TapsMajorWeights`` for modules whose taps-major weights are depthwise weights."""

    def depthwise_weights(self) -> Iterable[Tensor | None]:
        raise NotImplementedError

    def taps_major_weights(self) -> Iterable[Tensor | None]:
        return self.depthwise_weights()

    def relay_depthwise_weights(self) -> None:
        self.relay_taps_major_weights()
