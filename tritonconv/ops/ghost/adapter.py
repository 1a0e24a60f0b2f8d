"""The Ghost module's adapter: its cheap operation, one depthwise launch writing the intrinsic and the
kept ghost maps into one output (the ``depthwise`` operator with ``concat_input=True``)."""

from __future__ import annotations

from tritonconv.ops.depthwise import op as depthwise_op
from tritonconv.ops.depthwise.adapter import DepthwiseAdapter
from tritonconv.ops.depthwise.spec import DepthwiseSpec
from tritonconv.zoo import separable

SHAPE_SETS = ("ghostnet",)


def specs_for(shape_set: str, *, batch: int, dtype: str, channels_last: bool = False) -> list:
    """(label, count, spec) for the cheap operation of every GhostModule of GhostNet 1.0x at 224 px
    (inference form: BN folded into the bias, ReLU fused in ghost1, none in ghost2)."""
    if shape_set not in SHAPE_SETS:
        raise ValueError(f"shape set {shape_set!r} is not known for ghost; expected one of {SHAPE_SETS}")
    out = []
    for layer, count in separable.unique(separable.ghostnet_ghost_modules(224)):
        m = layer.init_channels
        spec = DepthwiseSpec(batch, m, layer.out_channels - m, layer.height, layer.width, layer.dw_size, 1,
                             layer.dw_size // 2, 1, layer.ratio - 1, True, "relu" if layer.relu else "none", dtype,
                             channels_last, concat_input=True)
        out.append((layer.name, count, spec))
    return out


class GhostAdapter(DepthwiseAdapter):
    shape_sets = SHAPE_SETS
    specs_for = staticmethod(specs_for)
    op = depthwise_op  # no folder of its own for the operators: ghost_concat is the depthwise operator's

    def layer_call(self, t: dict, spec: DepthwiseSpec):
        return self.op.ghost_concat(t["x"], t["weight"], t["bias"], spec.multiplier, spec.activation)


ADAPTER = GhostAdapter()
