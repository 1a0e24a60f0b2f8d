"""ShuffledGroupConv2d's harness for the tuner and the perf suite (see ``tritonconv.harness``)."""

from __future__ import annotations

from dataclasses import replace

from tritonconv.harness import WeightBiasHarness
from tritonconv.ops.shuffle import launch, reference
from tritonconv.ops.shuffle.op import OPERATOR
from tritonconv.ops.shuffle.spec import ShuffleConvSpec

SHAPE_SETS = ("shufflenet_v1",)

# ShuffleNet V1 (CVPR 2018, Table 1) at 224 px: stage output channels per group count, and the units
# per stage (the first of each stage has stride 2). The stage-2 input is 24 channels at 56 x 56.
SHUFFLENET_V1_WIDTHS = {3: (240, 480, 960), 8: (384, 768, 1536)}
SHUFFLENET_V1_UNITS = (4, 8, 4)
SHUFFLENET_V1_GROUPS = (3, 8)


def shufflenet_v1(groups: int, resolution: int = 224) -> list[tuple[str, int, tuple]]:
    """(name, count, (in, out, conv groups, shuffle groups, size)) of every grouped 1 x 1 conv of
    ShuffleNet V1 with ``groups`` groups, the identical repeated units counted once. Per unit: conv1
    (in -> out/4, shuffled, at the unit's input size; stage 2's first is not grouped) and conv2
    (out/4 -> out - in for the stride-2 unit, out otherwise, at its output size)."""
    if groups not in SHUFFLENET_V1_WIDTHS:
        raise ValueError(f"groups={groups} has no ShuffleNet V1 width table; expected one of "
                         f"{tuple(SHUFFLENET_V1_WIDTHS)}")
    layers, in_channels, size = [], 24, resolution // 4
    for stage, (width, units) in enumerate(zip(SHUFFLENET_V1_WIDTHS[groups], SHUFFLENET_V1_UNITS), start=2):
        first_groups = 1 if stage == 2 else groups
        prefix = f"g{groups}.stage{stage}"
        layers.append((f"{prefix}.0.conv1", 1, (in_channels, width // 4, first_groups, groups, size)))
        size = (size - 1) // 2 + 1
        layers.append((f"{prefix}.0.conv2", 1, (width // 4, width - in_channels, groups, 1, size)))
        layers.append((f"{prefix}.1.conv1", units - 1, (width, width // 4, groups, groups, size)))
        layers.append((f"{prefix}.1.conv2", units - 1, (width // 4, width, groups, 1, size)))
        in_channels = width
    return layers


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


class ShuffleHarness(WeightBiasHarness):
    operator = OPERATOR
    launch = launch
    reference = reference
    shape_sets = SHAPE_SETS
    specs_for = staticmethod(specs_for)

    def weight_fan_in(self, spec: ShuffleConvSpec) -> int:
        return spec.group_in

    def dense_window(self, spec: ShuffleConvSpec) -> tuple[int, int, int, int]:
        """The ungrouped 1 x 1 conv with the same channels (what the grouped conv + shuffle replaces)."""
        return 1, 1, 0, 1

    def shrink(self, spec: ShuffleConvSpec) -> ShuffleConvSpec:
        """Batch 2, 7x5 pixels, at most 8 channels per group in and 4 per shuffle group out."""
        dtype = "float32" if spec.dtype == "bfloat16" else spec.dtype  # bf16 is wrong in the interpreter
        out = spec.groups * spec.shuffle_groups * min(spec.group_out // spec.shuffle_groups, 4)
        return replace(spec, batch=2, in_channels=spec.groups * min(spec.group_in, 8), out_channels=out,
                       height=min(spec.height, 7), width=min(spec.width, 5), dtype=dtype)


HARNESS = ShuffleHarness()
