"""The dense-conv path of layers that compose an ordinary filter bank and then convolve with it
(LinearConv2d, RotFlipConv2d).

Where the call fits the Triton implicit-GEMM conv (HetConv2d with p=1: odd k, padding (k-1)//2,
stride 1 or 2, dilation 1, groups 1), the bank goes through ``tritonconv.hetconv2d(..., p=1)``, which
is itself dispatched per shape against cuDNN with the shared tuning cache (tuned as the ``hetconv``
operator with p=1). Anything else goes to ``F.conv2d`` (cuDNN on a GPU). No second dense kernel.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from tritonconv._spec import ConvShape, output_size
from tritonconv._validation import check_same
from tritonconv.accounting import Cost
from tritonconv.dispatch import Decision
from tritonconv.ops.hetconv import explain as hetconv_explain
from tritonconv.ops.hetconv import hetconv2d
from tritonconv.ops.hetconv.launch import KERNEL_WEIGHT_FORMAT


def triton_misfit(kernel_size: int, stride: int, padding: int, dilation: int, groups: int) -> str | None:
    """Why the Triton implicit-GEMM conv cannot run this conv, or None when it can."""
    reasons = []
    if kernel_size % 2 == 0:
        reasons.append(f"kernel_size={kernel_size} is even")
    elif padding != (kernel_size - 1) // 2:
        reasons.append(f"padding={padding} is not (k-1)//2={(kernel_size - 1) // 2}")
    if stride not in (1, 2):
        reasons.append(f"stride={stride} is not 1 or 2")
    if dilation != 1:
        reasons.append(f"dilation={dilation} is not 1")
    if groups != 1:
        reasons.append(f"groups={groups} is not 1")
    if not reasons:
        return None
    return "the Triton implicit-GEMM conv (HetConv p=1) needs odd k, padding (k-1)//2, stride 1 or 2, dilation 1 " \
           "and groups 1, but " + ", ".join(reasons) + ": F.conv2d (cuDNN)"


def check_bank(bank: Tensor, x: Tensor) -> None:
    """The composed weight must match the (autocast) input's dtype and device."""
    check_same("weight", bank, x, "input")


def dense_conv2d(x: Tensor, bank: Tensor, bias: Tensor | None, stride: int, padding: int, dilation: int,
                 groups: int) -> Tensor:
    """``conv(x, bank, bias, stride, padding, dilation, groups)`` on the Triton conv where it fits."""
    k = bank.shape[-1]
    if triton_misfit(k, stride, padding, dilation, groups) is None:
        # p=1: every filter's k x k kernels cover all channels and the pointwise part is empty. The bank in
        # the kernels' weight layout here, where autograd sees the copy, not inside the operator (whose
        # calls then replay: tritonconv._replay)
        bank = bank.contiguous(memory_format=KERNEL_WEIGHT_FORMAT)
        return hetconv2d(x, bank, bank.new_empty(bank.shape[0], 0), bias, stride, 1)
    return F.conv2d(x, bank, bias, stride, padding, dilation, groups)


def explain(x: Tensor, bank: Tensor, bias: Tensor | None, stride: int, padding: int, dilation: int, groups: int,
            pass_: str = "forward") -> Decision:
    """Which backend ``dense_conv2d`` takes for this call, and why."""
    misfit = triton_misfit(bank.shape[-1], stride, padding, dilation, groups)
    if misfit is not None:
        return Decision("fallback", misfit)
    return hetconv_explain(x, bank, bank.new_empty(bank.shape[0], 0), bias, stride, 1, pass_)


@dataclass(frozen=True)
class DenseConvSpec(ConvShape):
    """An ordinary conv's shape, for its cost."""

    kernel_size: int
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    groups: int = 1
    bias: bool = True
    dtype: str = "float32"

    @functools.cached_property
    def output_shape(self) -> tuple[int, int, int, int]:
        window = (self.kernel_size, self.stride, self.padding, self.dilation)
        return (self.batch, self.out_channels, output_size(self.height, *window), output_size(self.width, *window))

    def cost(self) -> Cost:
        """MACs ``B*Ho*Wo*F*(C/groups)*k^2``; bytes: input, filter bank, bias and output once each."""
        batch, out_channels, out_h, out_w = self.output_shape
        bank = out_channels * (self.in_channels // self.groups) * self.kernel_size**2
        macs = batch * out_h * out_w * bank
        elements = (self.batch * self.in_channels * self.height * self.width + batch * out_channels * out_h * out_w
                    + bank + (out_channels if self.bias else 0))
        return Cost(macs=macs, bytes=elements * getattr(torch, self.dtype).itemsize)
