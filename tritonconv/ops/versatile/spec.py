"""VersatileSpec: the one description of a VersatileConv2d call (SPEC section 4) that the layer,
dispatcher, tuner, perf suite and tests share."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from tritonconv._spec import WindowedSpecShapes, image_past_int32, memoized_from_tensors
from tritonconv._validation import check_positive_int, check_same, check_shape, check_tensor, dtype_name
from tritonconv.accounting import Cost

MAX_KERNEL_SIZE = 7  # s_num = 4 accumulators of [BLOCK_M, BLOCK_N] in the forward kernel


def validate_hyperparameters(in_channels, out_channels, kernel_size, stride, padding, dilation, delta, g) -> None:
    check_positive_int("in_channels", in_channels)
    check_positive_int("out_channels", out_channels)
    check_positive_int("kernel_size", kernel_size)
    check_positive_int("stride", stride)
    if padding is not None:
        check_positive_int("padding", padding, minimum=0)
    check_positive_int("dilation", dilation)
    check_positive_int("delta", delta, minimum=0)
    check_positive_int("g", g)
    if delta >= in_channels:
        raise ValueError(f"delta={delta} must be smaller than in_channels={in_channels}: each filter sees "
                         "C - delta channels")
    if delta % g:
        raise ValueError(f"g={g} must divide delta={delta}: channel offsets are 0, g, 2g, ..., delta")
    secondaries = spatial_secondaries(kernel_size) * (delta // g + 1)
    if out_channels % secondaries:
        raise ValueError(f"out_channels={out_channels} must be a multiple of s_num * n_c = "
                         f"{spatial_secondaries(kernel_size)} * {delta // g + 1} = {secondaries} "
                         f"(kernel_size={kernel_size}, delta={delta}, g={g})")


def spatial_secondaries(kernel_size: int) -> int:
    """s_num = ceil(k/2): secondary s keeps the taps at least s rings inside the k x k window."""
    return (kernel_size + 1) // 2


def triton_unsupported(spec: "VersatileSpec") -> str | None:
    """What the Triton kernels cannot take (the fallback computes it)."""
    if spec.kernel_size > MAX_KERNEL_SIZE:
        return (f"kernel_size={spec.kernel_size}; the kernels keep one accumulator per spatial secondary and take "
                f"kernel_size <= {MAX_KERNEL_SIZE}")
    return image_past_int32(spec)


@dataclass(frozen=True)
class VersatileSpec(WindowedSpecShapes):
    kernel_size: int = 5
    stride: int = 1
    padding: int | None = None  # None: dilation * (k // 2), resolved in __post_init__
    dilation: int = 1
    delta: int = 0
    g: int = 1
    bias: bool = True
    dtype: str = "float32"
    channels_last: bool = False

    def __post_init__(self):
        validate_hyperparameters(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                                 self.dilation, self.delta, self.g)
        if self.padding is None:
            object.__setattr__(self, "padding", self.dilation * (self.kernel_size // 2))
        self.validate_shape()
        span = self.dilation * (self.kernel_size - 1) + 1
        if self.height + 2 * self.padding < span or self.width + 2 * self.padding < span:
            raise ValueError(f"input spatial size {(self.height, self.width)} with padding={self.padding} is smaller "
                             f"than the dilated kernel ({span} x {span})")

    # ---- derived shapes -------------------------------------------------------------------
    @functools.cached_property
    def s_num(self) -> int:
        return spatial_secondaries(self.kernel_size)

    @functools.cached_property
    def n_c(self) -> int:
        """Channel offsets 0, g, ..., delta."""
        return self.delta // self.g + 1

    @functools.cached_property
    def n_w(self) -> int:
        """Primary filters."""
        return self.out_channels // (self.s_num * self.n_c)

    @functools.cached_property
    def c_hat(self) -> int:
        """Input channels each filter sees."""
        return self.in_channels - self.delta

    @functools.cached_property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.n_w, self.c_hat, self.kernel_size, self.kernel_size)

    # ---- cost -------------------------------------------------------------------------------
    def parameter_count(self) -> int:
        return self.n_w * self.c_hat * self.kernel_size**2 + (self.out_channels if self.bias else 0)

    def cost(self) -> Cost:
        """SPEC MACs ``Ho Wo n_w n_c c_hat sum_s (k - 2s)^2`` per image (what one conv per secondary does).
        The kernel itself multiplies each tap once and shares it: ``k^2`` instead of the sum."""
        pixels = self.batch * self.out_height * self.out_width
        taps = sum((self.kernel_size - 2 * s) ** 2 for s in range(self.s_num))
        macs = pixels * self.n_w * self.n_c * self.c_hat * taps
        n_params = self.parameter_count()
        elements = self.batch * self.in_channels * self.height * self.width + pixels * self.out_channels
        return Cost(macs=macs, bytes=(elements + n_params) * self.torch_dtype.itemsize)

    def dense_cost(self) -> Cost:
        """The ordinary k x k conv with the same input and output channels."""
        pixels = self.batch * self.out_height * self.out_width
        n_params = self.out_channels * self.in_channels * self.kernel_size**2
        elements = self.batch * self.in_channels * self.height * self.width + pixels * self.out_channels
        return Cost(macs=pixels * n_params, bytes=(elements + n_params) * self.torch_dtype.itemsize)

    # ---- description ---------------------------------------------------------------------------
    def describe(self) -> str:
        return (f"{self.in_channels}->{self.out_channels} versatile k{self.kernel_size} s{self.stride} "
                f"p{self.padding} d{self.dilation} delta{self.delta} g{self.g} {self.height}x{self.width} "
                f"b{self.batch}")

    # ---- construction from a call ----------------------------------------------------------
    @memoized_from_tensors
    def from_tensors(cls, x, weight, bias, *, out_channels: int, stride: int, padding: int | None, dilation: int,
                     delta: int, g: int) -> "VersatileSpec":
        """Validate a call's tensors against each other and describe it."""
        check_tensor("input", x, rank=4)
        check_tensor("weight", weight, rank=4)
        in_channels, k = x.shape[1], weight.shape[-1]
        if weight.shape[1] + delta != in_channels:
            raise ValueError(f"input has {in_channels} channels but weight {tuple(weight.shape)} with "
                             f"delta={delta} expects {weight.shape[1] + delta}")
        validate_hyperparameters(in_channels, out_channels, k, stride, padding, dilation, delta, g)
        n_w = out_channels // (spatial_secondaries(k) * (delta // g + 1))
        check_shape("weight", weight, (n_w, in_channels - delta, k, k))
        check_same("weight", weight, x, "input")
        if bias is not None:
            check_tensor("bias", bias, rank=1)
            check_shape("bias", bias, (out_channels,))
            check_same("bias", bias, x, "input")
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        return cls(batch=x.shape[0], in_channels=in_channels, out_channels=out_channels, height=x.shape[2],
                   width=x.shape[3], kernel_size=k, stride=stride, padding=padding, dilation=dilation, delta=delta,
                   g=g, bias=bias is not None, dtype=dtype_name(x.dtype), channels_last=channels_last)
