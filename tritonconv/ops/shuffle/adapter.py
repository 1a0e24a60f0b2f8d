"""ShuffledGroupConv2d's adapter for the tuner and the perf suite (see ``tritonconv.adapter``)."""

from __future__ import annotations

from dataclasses import replace

from tritonconv import dispatch
from tritonconv._spec import image_past_int32
from tritonconv.adapter import WeightBiasAdapter
from tritonconv.ops.shuffle import kernels, launch, reference
from tritonconv.ops.shuffle.spec import ShuffleConvSpec
from tritonconv.zoo.shuffle import SHUFFLENET_V1_GROUPS, shufflenet_v1

SHAPE_SETS = ("shufflenet_v1",)


def specs_for(shape_set: str, *, batch: int, dtype: str, channels_last: bool = False,
              groups: int | None = None) -> list:
    """(label, count, spec) for every grouped 1 x 1 conv of ``shape_set``: ShuffleNet V1 with g = 3 and
    g = 8 (``groups`` picks one). No bias: BatchNorm follows every one of them."""
    if shape_set not in SHAPE_SETS:
        raise ValueError(f"shape set {shape_set!r} is not known for shuffle; expected one of {SHAPE_SETS}")
    out = []
    for g in (groups,) if groups is not None else SHUFFLENET_V1_GROUPS:
        for name, count, (c, n, conv_groups, shuffle, size) in shufflenet_v1(g):
            out.append((name, count, ShuffleConvSpec(batch, c, n, size, size, conv_groups, shuffle, False, dtype,
                                                     channels_last)))
    return out


class ShuffleAdapter(WeightBiasAdapter):
    operator = dispatch.Operator.of("shuffle_conv", kernels, launch, triton_unsupported=image_past_int32)
    shape_sets = SHAPE_SETS
    specs_for = staticmethod(specs_for)
    launch = launch
    reference = reference

    def weight_fan_in(self, spec: ShuffleConvSpec) -> int:
        return spec.group_in

    def dense_window(self, spec: ShuffleConvSpec) -> tuple[int, int, int, int]:
        """The ungrouped 1 x 1 conv with the same channels (what the grouped conv + shuffle replaces)."""
        return 1, 1, 0, 1

    def layer_call(self, t: dict, spec):
        return self.op.shuffle_conv1x1(t["x"], t["weight"], t["bias"], spec.groups, spec.shuffle_groups)

    def shrink(self, spec: ShuffleConvSpec) -> ShuffleConvSpec:
        """Batch 2, 7x5 pixels, at most 8 channels per group in and 4 per shuffle group out."""
        dtype = "float32" if spec.dtype == "bfloat16" else spec.dtype  # bf16 is wrong in the interpreter
        out = spec.groups * spec.shuffle_groups * min(spec.group_out // spec.shuffle_groups, 4)
        return replace(spec, batch=2, in_channels=spec.groups * min(spec.group_in, 8), out_channels=out,
                       height=min(spec.height, 7), width=min(spec.width, 5), dtype=dtype)


ADAPTER = ShuffleAdapter()
