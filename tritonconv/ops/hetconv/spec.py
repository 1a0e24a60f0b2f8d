"""HetConvSpec: the one description of a HetConv2d call that the layer, dispatcher, tuner, perf suite
and tests share (SPEC section 1, blocked layout)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import torch

from tritonconv._spec import WindowedSpecShapes, image_past_int32, memoized_from_tensors
from tritonconv._validation import check_positive_int, check_same, check_shape, check_tensor, dtype_name
from tritonconv.accounting import Cost


def validate_hyperparameters(in_channels, out_channels, kernel_size, stride, p) -> None:
    check_positive_int("in_channels", in_channels)
    check_positive_int("out_channels", out_channels)
    check_positive_int("kernel_size", kernel_size)
    if kernel_size % 2 == 0:
        raise ValueError(
            f"kernel_size={kernel_size} must be odd: the 1 x 1 kernels sit on the centre tap of the k x k window"
        )
    check_positive_int("stride", stride)
    check_positive_int("p", p)
    if in_channels % p or out_channels % p:
        raise ValueError(
            f"p={p} must divide both in_channels={in_channels} and out_channels={out_channels}"
        )


def triton_unsupported(spec: "HetConvSpec") -> str | None:
    """What the Triton kernels cannot take (the fallback computes it)."""
    if spec.stride not in (1, 2):
        return f"stride={spec.stride}; the kernels take stride 1 or 2"
    return image_past_int32(spec)


@dataclass(frozen=True)
class HetConvSpec(WindowedSpecShapes):
    kernel_size: int = 3
    stride: int = 1
    p: int = 4
    bias: bool = False
    dtype: str = "float32"
    channels_last: bool = False

    def __post_init__(self):
        validate_hyperparameters(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.p)
        self.validate_shape()

    # ---- derived shapes -------------------------------------------------------------------
    @functools.cached_property
    def padding(self) -> int:
        return (self.kernel_size - 1) // 2

    @functools.cached_property
    def dilation(self) -> int:
        return 1

    @functools.cached_property
    def group_in(self) -> int:
        """M/p: input channels that a filter sees through k x k kernels."""
        return self.in_channels // self.p

    @functools.cached_property
    def group_out(self) -> int:
        """N/p: filters per group."""
        return self.out_channels // self.p

    @functools.cached_property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.group_in, self.kernel_size, self.kernel_size)

    @functools.cached_property
    def weight_pw_shape(self) -> tuple[int, int]:
        return (self.out_channels, self.in_channels - self.group_in)

    # ---- cost -------------------------------------------------------------------------------
    def parameter_count(self) -> int:
        """N*M*(1 + (k^2 - 1)/p) (+N): SPEC section 1."""
        weights = self.out_channels * (self.group_in * self.kernel_size**2 + self.in_channels - self.group_in)
        return weights + (self.out_channels if self.bias else 0)

    def cost(self) -> Cost:
        k2 = self.kernel_size**2
        pixels = self.batch * self.out_height * self.out_width
        macs = pixels * self.out_channels * (k2 * self.group_in + self.in_channels - self.group_in)
        elements = self.batch * self.in_channels * self.height * self.width + pixels * self.out_channels
        return Cost(macs=macs, bytes=(elements + self.parameter_count()) * self.torch_dtype.itemsize)

    def dense_cost(self) -> Cost:
        """What the ordinary k x k conv of the same shape costs (the layer HetConv replaces)."""
        dense = replace(self, p=1)
        return dense.cost()

    def unfused_cost(self) -> Cost:
        """The published formulation (the fallback): the grouped k x k conv and the 1 x 1 conv with the
        expanded [N, M] weight each read the input and write an output, and the add reads both back and
        writes the result: the input twice and five output-sized passes, against our once and once."""
        x = self.batch * self.in_channels * self.height * self.width
        y = self.batch * self.out_channels * self.out_height * self.out_width
        params = self.out_channels * (self.group_in * self.kernel_size**2 + self.in_channels + int(self.bias))
        return Cost(macs=self.cost().macs, bytes=(2 * x + 5 * y + params) * self.torch_dtype.itemsize)

    # ---- description ---------------------------------------------------------------------------
    def describe(self) -> str:
        return (
            f"{self.in_channels}->{self.out_channels} k{self.kernel_size} s{self.stride} p{self.p} "
            f"{self.height}x{self.width} b{self.batch}"
        )

    # ---- construction from a call ----------------------------------------------------------
    @memoized_from_tensors
    def from_tensors(cls, x, weight, weight_pw, bias, *, stride: int, p: int) -> "HetConvSpec":
        """Validate a call's tensors against each other and describe it."""
        check_tensor("input", x, rank=4)
        check_tensor("weight", weight, rank=4)
        check_tensor("weight_pw", weight_pw, rank=2)
        n, group_in, k, k2 = weight.shape
        in_channels = x.shape[1]
        validate_hyperparameters(in_channels, n, k, stride, p)
        if k != k2:
            raise ValueError(f"weight has shape {tuple(weight.shape)}; expected square k x k kernels")
        if group_in * p != in_channels:
            raise ValueError(
                f"input has {in_channels} channels but weight {tuple(weight.shape)} with p={p} "
                f"expects {group_in * p}"
            )
        check_shape("weight_pw", weight_pw, (n, in_channels - group_in))
        check_same("weight", weight, x, "input")
        check_same("weight_pw", weight_pw, x, "input")
        if bias is not None:
            check_tensor("bias", bias, rank=1)
            check_shape("bias", bias, (n,))
            check_same("bias", bias, x, "input")
        if x.shape[2] == 0 or x.shape[3] == 0:
            raise ValueError(f"input has spatial size {tuple(x.shape[2:])}; expected at least 1 x 1")
        channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        return cls(
            batch=x.shape[0], in_channels=in_channels, out_channels=n, height=x.shape[2], width=x.shape[3],
            kernel_size=k, stride=stride, p=p, bias=bias is not None, dtype=dtype_name(x.dtype),
            channels_last=channels_last,
        )
