"""``RotFlipConv2d``: every stored filter applied in its 4 rotations and their mirror images."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tritonconv._layout import autocast_operands, conv_default_init_
from tritonconv._validation import check_bool, check_input, check_positive_int, dtype_name
from tritonconv.accounting import Cost
from tritonconv.dispatch import Decision
from tritonconv.ops.linearconv import dense
from tritonconv.ops.linearconv.layer import validate_conv
from tritonconv.ops.rotflip import reference


def validate_hyperparameters(in_channels, out_channels, kernel_size, stride, padding, dilation) -> None:
    check_positive_int("in_channels", in_channels)
    check_positive_int("out_channels", out_channels)
    if out_channels % reference.TRANSFORMS:
        raise ValueError(f"out_channels={out_channels} must be a multiple of 8 (8 maps per stored filter)")
    check_positive_int("kernel_size", kernel_size)
    check_positive_int("stride", stride)
    check_positive_int("padding", padding, minimum=0)
    check_positive_int("dilation", dilation)


class RotFlipConv2d(nn.Module):
    """Rotated and flipped filters (SPEC section 6): ``out_channels/8`` stored filters ``weight``
    [O/8, C, k, k], each producing 8 feature maps from its 4 rotations and their mirror images, with no
    extra filter parameters. ``bias`` [O] (one per output map, as nn.Conv2d) or None.

    Output order: channel ``o = f*8 + t`` with ``t = mirror*4 + rotation`` is stored filter f mirrored
    left-right (if ``mirror``) and then rotated by ``torch.rot90`` counter-clockwise ``rotation`` times.
    With odd k, ``padding=(k-1)//2``, stride 1 and a square input, rotating the input by 90 degrees
    rotates every map and moves it from rotation r to r+1 (the group equivariance the tests check).

    The expanded bank [O, C, k, k] is built on every call (8 small copies, with autograd) and runs
    through the same dense-conv path as LinearConv2d: the Triton implicit-GEMM conv (HetConv p=1) where
    it fits, ``F.conv2d`` (cuDNN) otherwise; ``explain`` says which.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1, bias: bool = True, *, device=None, dtype=None):
        super().__init__()
        check_bool("bias", bias)
        validate_hyperparameters(in_channels, out_channels, kernel_size, stride, padding, dilation)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.stride, self.padding, self.dilation = stride, padding, dilation
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_channels // reference.TRANSFORMS, in_channels, kernel_size,
                                               kernel_size, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        conv_default_init_(self.in_channels * self.kernel_size**2, self.weight, self.bias)

    def filter_bank(self) -> Tensor:
        """The expanded filters [O, C, k, k]."""
        return reference.expand_bank(self.weight)

    def _operands(self, x: Tensor):
        check_input(x, self.in_channels, window=(self.kernel_size, self.padding, self.dilation))
        x, bank, bias = autocast_operands(x, self.filter_bank(), self.bias)
        dense.check_bank(bank, x)
        return x, bank, bias

    def forward(self, x: Tensor) -> Tensor:
        x, bank, bias = self._operands(x)
        return dense.dense_conv2d(x, bank, bias, self.stride, self.padding, self.dilation, 1)

    def explain(self, x: Tensor, pass_: str = "forward") -> Decision:
        """Which backend ``self(x)`` (or its backward) takes, and why, without running it."""
        with torch.no_grad():
            x, bank, bias = self._operands(x)
        return dense.explain(x, bank, bias, self.stride, self.padding, self.dilation, 1, pass_)

    def spec(self, input_shape, dtype: torch.dtype | None = None) -> dense.DenseConvSpec:
        batch, _, height, width = input_shape
        return dense.DenseConvSpec(batch, self.in_channels, self.out_channels, height, width, self.kernel_size,
                                   self.stride, self.padding, self.dilation, 1, self.bias is not None,
                                   dtype_name(dtype or self.weight.dtype))

    def cost(self, input_shape) -> Cost:
        """The dense conv's cost: every one of the O maps is a full k x k conv."""
        return self.spec(input_shape).cost()

    @classmethod
    def from_conv2d(cls, conv: nn.Conv2d) -> "RotFlipConv2d":
        """Stored filters = the least-squares projection of the conv's filters onto rotated/flipped
        banks (the mean of each group of 8 mapped back to orientation 0); the bias is kept.

        This is a re-parameterisation, not an equivalence (exact only for a conv whose filters already
        are the 8 transforms of each other): the network needs fine-tuning afterwards.
        """
        k, stride, padding, dilation, groups = validate_conv(conv)
        if groups != 1:
            raise ValueError(f"cannot replace {conv}: groups={groups}; RotFlipConv2d needs groups=1")
        layer = cls(conv.in_channels, conv.out_channels, k, stride, padding, dilation, conv.bias is not None,
                    device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(reference.project(conv.weight))
            if conv.bias is not None:
                layer.bias.copy_(conv.bias)
        return layer.train(conv.training)

    def extra_repr(self) -> str:
        text = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}")
        if self.dilation != 1:
            text += f", dilation={self.dilation}"
        return text + f", bias={self.bias is not None}"
