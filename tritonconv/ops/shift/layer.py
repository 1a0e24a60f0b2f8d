"""``ShiftConv2d``: the nn.Module users put in their models."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tritonconv._layout import conv_default_init_, layer_operands
from tritonconv._validation import check_bool, dtype_name
from tritonconv.accounting import Cost
from tritonconv.dispatch import Decision
from tritonconv.ops.shift.op import explain, shift_conv2d
from tritonconv.ops.shift.spec import ShiftSpec, validate_hyperparameters


class ShiftConv2d(nn.Module):
    """Shift, then 1 x 1 convolution (ShiftNet), SPEC section 3, in one Triton kernel.

    ``s[b, c, h, w] = x[b, c, h + dh_c, w + dw_c]`` (zero outside the image), then
    ``y = conv2d(s, weight, bias, stride)``: the stride applies after the shift. With
    ``R = (C // k^2) k^2``, ``assignment="interleaved"`` (the original CUDA kernels) gives channel
    ``c < R`` the shift ``dw = d((c mod k) - k//2)``, ``dh = d(((c // k) mod k) - k//2)``;
    ``"grouped"`` gives contiguous groups of ``C // k^2`` channels one direction each, in the same
    direction order. Channels ``c >= R`` are not shifted. ``kernel_size`` must be odd.

    Parameters: ``weight`` [N, C, 1, 1] (exactly ``nn.Conv2d(C, N, 1).weight``), ``bias`` [N] or None.
    The shift lives in the kernel's load addresses: no shifted tensor is ever written. Under autocast,
    input and weights are cast to the autocast dtype.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1, stride: int = 1,
                 bias: bool = True, assignment: str = "interleaved", device=None, dtype=None):
        super().__init__()
        check_bool("bias", bias)
        validate_hyperparameters(in_channels, out_channels, kernel_size, dilation, stride, assignment)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.dilation, self.stride, self.assignment = dilation, stride, assignment
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 1, 1, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        conv_default_init_(self.in_channels, self.weight, self.bias)

    def _operands(self, x: Tensor):
        return layer_operands(x, self.in_channels, self.weight, self.bias)

    def forward(self, x: Tensor) -> Tensor:
        x, weight, bias = self._operands(x)
        return shift_conv2d(x, weight, bias, self.kernel_size, self.dilation, self.stride, self.assignment)

    def explain(self, x: Tensor, pass_: str = "forward") -> Decision:
        """Which backend ``self(x)`` (or its backward) takes, and why."""
        x, weight, bias = self._operands(x)
        return explain(x, weight, bias, self.kernel_size, self.dilation, self.stride, self.assignment, pass_)

    def spec(self, input_shape, dtype: torch.dtype | None = None, channels_last: bool = False) -> ShiftSpec:
        batch, _, height, width = input_shape
        return ShiftSpec(batch, self.in_channels, self.out_channels, height, width, self.kernel_size, self.dilation,
                         self.stride, self.assignment, self.bias is not None, dtype_name(dtype or self.weight.dtype),
                         channels_last)

    def cost(self, input_shape) -> Cost:
        return self.spec(input_shape).cost()

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, dilation={self.dilation}, "
                f"stride={self.stride}, bias={self.bias is not None}, assignment={self.assignment!r}")
