"""DwSepSpec: one description of a fused depthwise-separable conv call (SPEC section 2)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from tritonconv._spec import WindowedSpecShapes, image_past_int32, memoized_from_tensors
from tritonconv._validation import check_positive_int, check_same, check_shape, check_tensor, dtype_name
from tritonconv.accounting import Cost
from tritonconv.ops.depthwise.spec import (
    DepthwiseSpec,
    check_spatial,
    layout_of,
    normalize_activation,
    validate_window,
    window_unsupported,
)

INT32 = 2**31
PIXEL_MARGIN = 1024  # more than any pixel block: a last tile's int32 pixel indices stay below 2^31


def triton_unsupported(spec: "DwSepSpec") -> str | None:
    """What the fused kernels cannot take (the fallback, the unfused pair, computes it): the depthwise
    kernels' limits, and pixel indices or in-image offsets past int32."""
    pixels = spec.batch * spec.out_height * spec.out_width
    if pixels + PIXEL_MARGIN >= INT32:
        return f"{pixels} output pixels: the fused kernels index pixels in int32"
    between = spec.in_channels * spec.out_height * spec.out_width  # dz, the backward's depthwise output
    if between >= INT32:
        return (f"the depthwise output's image holds {between} elements, past 2^31: the fused kernels address "
                "inside an image in int32")
    return image_past_int32(spec) or window_unsupported(spec)


@dataclass(frozen=True)
class DwSepSpec(WindowedSpecShapes):
    kernel_size: int = 3
    stride: int = 1
    padding: int = 1
    dilation: int = 1
    dw_bias: bool = True
    pw_bias: bool = True
    activation: str = "none"
    out_activation: str = "none"
    dtype: str = "float32"
    channels_last: bool = False

    def __post_init__(self):
        self.validate_shape()
        check_positive_int("in_channels", self.in_channels)
        check_positive_int("out_channels", self.out_channels)
        validate_window(self.kernel_size, self.stride, self.padding, self.dilation)
        check_spatial(self.height, self.width, self.kernel_size, self.stride, self.padding, self.dilation)
        normalize_activation("activation", self.activation)
        normalize_activation("out_activation", self.out_activation)

    @functools.cached_property
    def dw_weight_shape(self) -> tuple[int, int, int, int]:
        return (self.in_channels, 1, self.kernel_size, self.kernel_size)

    @functools.cached_property
    def pw_weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.in_channels, 1, 1)

    def depthwise(self) -> DepthwiseSpec:
        """The depthwise half alone, without its activation (the backward runs it on d(pre-activation))."""
        return DepthwiseSpec(self.batch, self.in_channels, self.in_channels, self.height, self.width,
                             self.kernel_size, self.stride, self.padding, self.dilation, 1, self.dw_bias, "none",
                             self.dtype, self.channels_last)

    def parameter_count(self) -> int:
        """C k^2 + C N (+ biases): SPEC section 2."""
        return (self.in_channels * self.kernel_size**2 + self.in_channels * self.out_channels
                + self.in_channels * int(self.dw_bias) + self.out_channels * int(self.pw_bias))

    def cost(self) -> Cost:
        """MACs ``Ho*Wo*C*(k*k + N)``; bytes: input, output and weights once (the intermediate stays on chip)."""
        pixels = self.batch * self.out_height * self.out_width
        macs = pixels * self.in_channels * (self.kernel_size**2 + self.out_channels)
        params = self.parameter_count()
        elements = self.batch * self.in_channels * self.height * self.width + pixels * self.out_channels
        return Cost(macs=macs, bytes=(elements + params) * self.torch_dtype.itemsize)

    def unfused_cost(self) -> Cost:
        """The unfused pair (cuDNN depthwise, then cuDNN 1 x 1): the depthwise conv writes the
        [B, C, Ho, Wo] intermediate and the 1 x 1 conv reads it back, on top of what the fused layer moves."""
        intermediate = self.batch * self.in_channels * self.out_height * self.out_width
        fused = self.cost()
        return Cost(macs=fused.macs, bytes=fused.bytes + 2 * intermediate * self.torch_dtype.itemsize)

    def dense_cost(self) -> Cost:
        """The ordinary k x k conv C -> N of the same shape (what the layer replaces)."""
        pixels = self.batch * self.out_height * self.out_width
        macs = pixels * self.in_channels * self.out_channels * self.kernel_size**2
        elements = (self.batch * self.in_channels * self.height * self.width + pixels * self.out_channels
                    + self.in_channels * self.out_channels * self.kernel_size**2)
        return Cost(macs=macs, bytes=elements * self.torch_dtype.itemsize)

    def describe(self) -> str:
        return (f"dwsep {self.in_channels}->{self.out_channels} k{self.kernel_size} s{self.stride} d{self.dilation} "
                f"{self.height}x{self.width} b{self.batch}")

    @memoized_from_tensors
    def from_tensors(cls, x, dw_weight, dw_bias, pw_weight, pw_bias, *, stride: int, padding: int, dilation: int,
                     activation: str, out_activation: str) -> "DwSepSpec":
        """Validate a call's tensors against each other and describe it."""
        check_tensor("input", x, rank=4)
        check_tensor("dw_weight", dw_weight, rank=4)
        check_tensor("pw_weight", pw_weight, rank=4)
        in_channels = x.shape[1]
        if dw_weight.shape[0] != in_channels or dw_weight.shape[1] != 1 or dw_weight.shape[2] != dw_weight.shape[3]:
            raise ValueError(f"dw_weight has shape {tuple(dw_weight.shape)}; expected [{in_channels}, 1, k, k] "
                             f"for an input with {in_channels} channels")
        out_channels = pw_weight.shape[0]
        check_shape("pw_weight", pw_weight, (out_channels, in_channels, 1, 1))
        for name, t in (("dw_weight", dw_weight), ("pw_weight", pw_weight)):
            check_same(name, t, x, "input")
        for name, t, n in (("dw_bias", dw_bias, in_channels), ("pw_bias", pw_bias, out_channels)):
            if t is not None:
                check_tensor(name, t, rank=1)
                check_shape(name, t, (n,))
                check_same(name, t, x, "input")
        k = dw_weight.shape[-1]
        validate_window(k, stride, padding, dilation)
        return cls(batch=x.shape[0], in_channels=in_channels, out_channels=out_channels, height=x.shape[2],
                   width=x.shape[3], kernel_size=k, stride=stride, padding=padding, dilation=dilation,
                   dw_bias=dw_bias is not None, pw_bias=pw_bias is not None,
                   activation=normalize_activation("activation", activation),
                   out_activation=normalize_activation("out_activation", out_activation),
                   dtype=dtype_name(x.dtype), channels_last=layout_of(x))
