"""ShiftSpec: the one description of a ShiftConv2d call (SPEC section 3) that the layer, dispatcher,
tuner, perf suite and tests share."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from tritonconv._spec import ConvSpecShapes, image_past_int32, memoized_from_tensors
from tritonconv._validation import check_positive_int, check_same, check_shape, check_tensor, dtype_name
from tritonconv.accounting import Cost

ASSIGNMENTS = ("interleaved", "grouped")


def validate_hyperparameters(in_channels, out_channels, kernel_size, dilation, stride, assignment) -> None:
    check_positive_int("in_channels", in_channels)
    check_positive_int("out_channels", out_channels)
    check_positive_int("kernel_size", kernel_size)
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size={kernel_size} must be odd: shifts are centred on the unshifted tap")
    check_positive_int("dilation", dilation)
    check_positive_int("stride", stride)
    if assignment not in ASSIGNMENTS:
        raise ValueError(f"assignment={assignment!r} is not known; expected one of {ASSIGNMENTS}")


def channel_shifts(in_channels: int, kernel_size: int, dilation: int, assignment: str) -> list[tuple[int, int]]:
    """(dh, dw) of every input channel: ``s[c, h, w] = x[c, h + dh, w + dw]`` (SPEC section 3)."""
    k2 = kernel_size**2
    group = in_channels // k2
    shifts = []
    for c in range(in_channels):
        if c >= group * k2:
            shifts.append((0, 0))  # remainder channels stay in place
            continue
        direction = c // group if assignment == "grouped" else c % k2
        shifts.append((dilation * (direction // kernel_size - kernel_size // 2),
                       dilation * (direction % kernel_size - kernel_size // 2)))
    return shifts


def triton_unsupported(spec: "ShiftSpec") -> str | None:
    """What the Triton kernels cannot take (the fallback computes it)."""
    return image_past_int32(spec)


@dataclass(frozen=True)
class ShiftSpec(ConvSpecShapes):
    kernel_size: int = 3
    dilation: int = 1
    stride: int = 1
    assignment: str = "interleaved"
    bias: bool = True
    dtype: str = "float32"
    channels_last: bool = False

    # The dilation changes addresses, not the GEMM's shape: dilations share tuning entries. (The
    # assignment does not: the kernels compile another path for each.)
    NOT_TUNED = ("dilation",)

    def __post_init__(self):
        validate_hyperparameters(self.in_channels, self.out_channels, self.kernel_size, self.dilation, self.stride,
                                 self.assignment)
        self.validate_shape()

    # ---- derived shapes -------------------------------------------------------------------
    @functools.cached_property
    def out_height(self) -> int:
        return (self.height - 1) // self.stride + 1

    @functools.cached_property
    def out_width(self) -> int:
        return (self.width - 1) // self.stride + 1

    @functools.cached_property
    def shift_group(self) -> int:
        """C // k^2: channels per shift direction."""
        return self.in_channels // self.kernel_size**2

    @functools.cached_property
    def shifted_channels(self) -> int:
        """R = (C // k^2) k^2: channels at or above R are not shifted."""
        return self.shift_group * self.kernel_size**2

    @functools.cached_property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.in_channels, 1, 1)

    # ---- cost -------------------------------------------------------------------------------
    def parameter_count(self) -> int:
        return self.out_channels * self.in_channels + (self.out_channels if self.bias else 0)

    def cost(self) -> Cost:
        """Exactly a 1 x 1 conv: the shift has no parameters, no FLOPs and no memory pass."""
        pixels = self.batch * self.out_height * self.out_width
        n_params = self.parameter_count()
        elements = self.batch * self.in_channels * self.height * self.width + pixels * self.out_channels
        return Cost(macs=pixels * self.in_channels * self.out_channels,
                    bytes=(elements + n_params) * self.torch_dtype.itemsize)

    def dense_cost(self) -> Cost:
        """The k x k conv (padding k//2, same stride) that shift + 1 x 1 replaces."""
        base = self.cost()
        extra_params = self.out_channels * self.in_channels * (self.kernel_size**2 - 1)
        return Cost(macs=base.macs * self.kernel_size**2, bytes=base.bytes + extra_params * self.torch_dtype.itemsize)

    # ---- description ---------------------------------------------------------------------------
    def describe(self) -> str:
        return (f"{self.in_channels}->{self.out_channels} shift k{self.kernel_size} d{self.dilation} "
                f"s{self.stride} {self.assignment} {self.height}x{self.width} b{self.batch}")

    # ---- construction from a call ----------------------------------------------------------
    @memoized_from_tensors
    def from_tensors(cls, x, weight, bias, *, kernel_size: int, dilation: int, stride: int,
                     assignment: str) -> "ShiftSpec":
        """Validate a call's tensors against each other and describe it."""
        check_tensor("input", x, rank=4)
        check_tensor("weight", weight, rank=4)
        in_channels, out_channels = x.shape[1], weight.shape[0]
        if weight.shape[1] != in_channels:
            raise ValueError(f"input has {in_channels} channels but weight {tuple(weight.shape)} expects "
                             f"{weight.shape[1]}")
        validate_hyperparameters(in_channels, out_channels, kernel_size, dilation, stride, assignment)
        check_shape("weight", weight, (out_channels, in_channels, 1, 1))
        check_same("weight", weight, x, "input")
        if bias is not None:
            check_tensor("bias", bias, rank=1)
            check_shape("bias", bias, (out_channels,))
            check_same("bias", bias, x, "input")
        if x.shape[2] < 1 or x.shape[3] < 1:
            raise ValueError(f"input has spatial size {tuple(x.shape[2:])}; expected at least 1 x 1")
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        return cls(batch=x.shape[0], in_channels=in_channels, out_channels=out_channels, height=x.shape[2],
                   width=x.shape[3], kernel_size=kernel_size, dilation=dilation, stride=stride,
                   assignment=assignment, bias=bias is not None, dtype=dtype_name(x.dtype),
                   channels_last=channels_last)
