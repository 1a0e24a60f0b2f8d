"""ShuffleNet V1's grouped 1 x 1 convs, the shuffled grouped conv's shape set."""

from __future__ import annotations

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
