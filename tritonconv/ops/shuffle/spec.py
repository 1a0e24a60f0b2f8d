"""ShuffleConvSpec: a grouped 1 x 1 convolution whose output is channel-shuffled (SPEC section 6),
the description the layer, dispatcher, tuner and tests share."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from tritonconv._spec import ConvSpecShapes, memoized_from_tensors
from tritonconv._validation import check_positive_int, check_same, check_shape, check_tensor, dtype_name
from tritonconv.accounting import Cost


def validate_hyperparameters(in_channels, out_channels, groups, shuffle_groups) -> None:
    check_positive_int("in_channels", in_channels)
    check_positive_int("out_channels", out_channels)
    check_positive_int("groups", groups)
    check_positive_int("shuffle_groups", shuffle_groups)
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"groups={groups} must divide both in_channels={in_channels} and "
                         f"out_channels={out_channels}")
    if out_channels % shuffle_groups:
        raise ValueError(f"shuffle_groups={shuffle_groups} must divide out_channels={out_channels}")


@dataclass(frozen=True)
class ShuffleConvSpec(ConvSpecShapes):
    """``shuffle(conv1x1(x, weight, bias, groups=groups), shuffle_groups)``; shuffle_groups=1: no shuffle."""

    groups: int = 1
    shuffle_groups: int = 1
    bias: bool = False
    dtype: str = "float32"
    channels_last: bool = False

    def __post_init__(self):
        validate_hyperparameters(self.in_channels, self.out_channels, self.groups, self.shuffle_groups)
        self.validate_shape()

    @functools.cached_property
    def out_height(self) -> int:
        """A 1 x 1 conv with stride 1: the output keeps the input's size."""
        return self.height

    @functools.cached_property
    def out_width(self) -> int:
        return self.width

    @functools.cached_property
    def group_in(self) -> int:
        return self.in_channels // self.groups

    @functools.cached_property
    def group_out(self) -> int:
        return self.out_channels // self.groups

    @functools.cached_property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.group_in, 1, 1)

    def parameter_count(self) -> int:
        return self.out_channels * self.group_in + (self.out_channels if self.bias else 0)

    def cost(self) -> Cost:
        """A grouped 1 x 1 conv; the shuffle moves no bytes (it is in the stores)."""
        pixels = self.batch * self.height * self.width
        n_params = self.parameter_count()
        elements = pixels * (self.in_channels + self.out_channels)
        return Cost(macs=pixels * self.out_channels * self.group_in,
                    bytes=(elements + n_params) * self.torch_dtype.itemsize)

    def describe(self) -> str:
        return (f"{self.in_channels}->{self.out_channels} 1x1 groups{self.groups} shuffle{self.shuffle_groups} "
                f"{self.height}x{self.width} b{self.batch}")

    @memoized_from_tensors
    def from_tensors(cls, x, weight, bias, *, groups: int, shuffle_groups: int) -> "ShuffleConvSpec":
        check_tensor("input", x, rank=4)
        check_tensor("weight", weight, rank=4)
        in_channels, out_channels = x.shape[1], weight.shape[0]
        if weight.shape[1] * groups != in_channels:
            raise ValueError(f"input has {in_channels} channels but weight {tuple(weight.shape)} with "
                             f"groups={groups} expects {weight.shape[1] * groups}")
        validate_hyperparameters(in_channels, out_channels, groups, shuffle_groups)
        check_shape("weight", weight, (out_channels, in_channels // groups, 1, 1))
        check_same("weight", weight, x, "input")
        if bias is not None:
            check_tensor("bias", bias, rank=1)
            check_shape("bias", bias, (out_channels,))
            check_same("bias", bias, x, "input")
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        return cls(batch=x.shape[0], in_channels=in_channels, out_channels=out_channels, height=x.shape[2],
                   width=x.shape[3], groups=groups, shuffle_groups=shuffle_groups, bias=bias is not None,
                   dtype=dtype_name(x.dtype), channels_last=channels_last)
