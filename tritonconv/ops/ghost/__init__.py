"""GhostModule (GhostNet): the cheap depthwise operation writes intrinsic and ghost maps into one output."""

from tritonconv.ops.ghost.layer import GhostModule

__all__ = ["GhostModule"]
