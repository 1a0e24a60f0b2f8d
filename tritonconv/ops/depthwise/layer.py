"""``DepthwiseConv2d``: a depthwise conv (with optional fused activation) for places where no pointwise
conv follows; ``DepthwiseSeparableConv2d`` fuses the pair."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tritonconv._layout import conv_default_init_, layer_operands
from tritonconv._validation import check_bool, check_positive_int, dtype_name
from tritonconv.accounting import Cost
from tritonconv.dispatch import Decision
from tritonconv.ops.depthwise.layout import TapsMajorWeights, empty_taps_major
from tritonconv.ops.depthwise.op import depthwise_conv2d, explain
from tritonconv.ops.depthwise.spec import DepthwiseSpec, default_padding, normalize_activation, validate_window


class DepthwiseConv2d(TapsMajorWeights):
    """``act(conv2d(x, weight, bias, stride, padding, dilation, groups=in_channels))``.

    Parameters: ``weight`` [C*multiplier, 1, k, k] (exactly ``nn.Conv2d(C, C*multiplier, k,
    groups=C).weight``), ``bias`` [C*multiplier] or None. ``padding=None`` means ``dilation*(k//2)``;
    ``activation`` is None, "relu" or "relu6" (fused into the kernel). ``kernel_size`` must be odd and
    ``stride`` 1 or 2. Each call is dispatched to the Triton kernel or cuDNN (``explain`` says why).
    ``weight`` is laid out taps-major ([k, k, C*multiplier] in memory, what the kernels read without a
    copy) and stays so through ``.to``, ``.half``, ``load_state_dict`` (see ``depthwise.layout``).
    """

    def __init__(self, in_channels: int, kernel_size: int = 3, stride: int = 1, padding: int | None = None,
                 dilation: int = 1, bias: bool = True, multiplier: int = 1, activation: str | None = None,
                 device=None, dtype=None):
        super().__init__()
        check_bool("bias", bias)
        check_positive_int("in_channels", in_channels)
        check_positive_int("multiplier", multiplier)
        check_positive_int("kernel_size", kernel_size)
        check_positive_int("dilation", dilation)
        padding = default_padding(kernel_size, dilation) if padding is None else padding
        validate_window(kernel_size, stride, padding, dilation)
        self.in_channels, self.kernel_size, self.stride, self.padding, self.dilation = (
            in_channels, kernel_size, stride, padding, dilation)
        self.multiplier = multiplier
        self.activation = normalize_activation("activation", activation)
        out_channels = in_channels * multiplier
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(empty_taps_major((out_channels, 1, kernel_size, kernel_size), **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def depthwise_weights(self):
        return (self.weight,)

    def reset_parameters(self) -> None:
        conv_default_init_(self.kernel_size**2, self.weight, self.bias)  # a depthwise filter's fan-in

    def forward(self, x: Tensor) -> Tensor:
        x, weight, bias = layer_operands(x, self.in_channels, self.weight, self.bias)
        return depthwise_conv2d(x, weight, bias, self.stride, self.padding, self.dilation,
                                None if self.activation == "none" else self.activation)

    def explain(self, x: Tensor, pass_: str = "forward") -> Decision:
        x, weight, bias = layer_operands(x, self.in_channels, self.weight, self.bias)
        return explain(x, weight, bias, self.stride, self.padding, self.dilation,
                       None if self.activation == "none" else self.activation, pass_)

    def spec(self, input_shape, dtype: torch.dtype | None = None, channels_last: bool = False) -> DepthwiseSpec:
        batch, _, height, width = input_shape
        return DepthwiseSpec(batch, self.in_channels, self.weight.shape[0], height, width, self.kernel_size,
                             self.stride, self.padding, self.dilation, self.multiplier, self.bias is not None,
                             self.activation, dtype_name(dtype or self.weight.dtype), channels_last)

    def cost(self, input_shape) -> Cost:
        return self.spec(input_shape).cost()

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, multiplier={self.multiplier}, bias={self.bias is not None}, "
                f"activation={self.activation}")
