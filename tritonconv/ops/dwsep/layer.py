"""``DepthwiseSeparableConv2d``: the nn.Module users put in their models (MobileNet blocks)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tritonconv._layout import conv_default_init_, layer_operands
from tritonconv._validation import check_bool, check_positive_int, dtype_name
from tritonconv.accounting import Cost
from tritonconv.dispatch import Decision
from tritonconv.ops.depthwise.layout import TapsMajorWeights, empty_taps_major
from tritonconv.ops.depthwise.spec import default_padding, normalize_activation, validate_window
from tritonconv.ops.dwsep.op import dwsep_conv2d, explain
from tritonconv.ops.dwsep.spec import DwSepSpec


def _bn_affine(bn: nn.Module | None, name: str, channels: int):
    """(scale, shift) of an eval-mode BatchNorm2d, or None; refuses batch statistics."""
    if bn is None:
        return None
    if not isinstance(bn, nn.BatchNorm2d):
        raise TypeError(f"{name} must be an nn.BatchNorm2d or None, got {type(bn).__name__}")
    if bn.training or bn.running_mean is None:
        raise ValueError(f"{name}={bn} uses batch statistics (training mode or track_running_stats=False); "
                         "call .eval() first: only running statistics can be folded")
    if bn.num_features != channels:
        raise ValueError(f"{name} has num_features={bn.num_features}; expected {channels}")
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale + (bn.bias if bn.bias is not None else 0)
    return scale.detach(), shift.detach()


def _activation_of(act) -> str | None:
    if act is None or isinstance(act, nn.Identity):
        return None
    if isinstance(act, str):
        return normalize_activation("act", act)
    if isinstance(act, nn.ReLU6):  # ReLU6 subclasses Hardtanh: test it first
        return "relu6"
    if isinstance(act, nn.ReLU):
        return "relu"
    if isinstance(act, nn.Hardtanh) and (act.min_val, act.max_val) == (0.0, 6.0):
        return "relu6"
    raise ValueError(f"act={act!r} is not supported; expected None, nn.Identity, nn.ReLU, nn.ReLU6, 'relu' or 'relu6'")


class DepthwiseSeparableConv2d(TapsMajorWeights):
    """``y = out_act(conv1x1(act(dwconv(x) + dw_bias)) + pw_bias)`` in one fused kernel (SPEC section 2).

    ``dwconv`` is ``conv2d(..., groups=in_channels)`` with ``kernel_size`` (odd), ``stride`` (1 or 2),
    ``dilation`` and ``padding`` (None means ``dilation*(k//2)``); activations are None, "relu" or
    "relu6". Parameters: ``dw_weight`` [C, 1, k, k], ``dw_bias`` [C] or None, ``pw_weight`` [N, C, 1, 1],
    ``pw_bias`` [N] or None (``bias`` switches both). The depthwise result never goes to device memory
    in the forward; the backward recomputes it. Every call is dispatched to the Triton kernels or the
    unfused cuDNN pair (``explain`` says which and why); under autocast, operands are cast.
    ``dw_weight`` is laid out taps-major ([k, k, C] in memory) and stays so (see ``depthwise.layout``).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int | None = None, dilation: int = 1, bias: bool = True, activation: str | None = None,
                 out_activation: str | None = None, device=None, dtype=None):
        super().__init__()
        check_bool("bias", bias)
        check_positive_int("in_channels", in_channels)
        check_positive_int("out_channels", out_channels)
        check_positive_int("kernel_size", kernel_size)
        check_positive_int("dilation", dilation)
        padding = default_padding(kernel_size, dilation) if padding is None else padding
        validate_window(kernel_size, stride, padding, dilation)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.activation = normalize_activation("activation", activation)
        self.out_activation = normalize_activation("out_activation", out_activation)
        factory = {"device": device, "dtype": dtype}
        self.dw_weight = nn.Parameter(empty_taps_major((in_channels, 1, kernel_size, kernel_size), **factory))
        self.dw_bias = nn.Parameter(torch.empty(in_channels, **factory)) if bias else None
        self.pw_weight = nn.Parameter(torch.empty(out_channels, in_channels, 1, 1, **factory))
        self.pw_bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def depthwise_weights(self):
        return (self.dw_weight,)

    def reset_parameters(self) -> None:
        # nn.Conv2d's default per conv: uniform(+-1/sqrt(fan_in)), fan_in k*k (depthwise) and C (pointwise).
        conv_default_init_(self.kernel_size**2, self.dw_weight, self.dw_bias)
        conv_default_init_(self.in_channels, self.pw_weight, self.pw_bias)

    def _activations(self) -> tuple[str | None, str | None]:
        return tuple(None if a == "none" else a for a in (self.activation, self.out_activation))

    def forward(self, x: Tensor) -> Tensor:
        x, dw_weight, dw_bias, pw_weight, pw_bias = layer_operands(
            x, self.in_channels, self.dw_weight, self.dw_bias, self.pw_weight, self.pw_bias)
        return dwsep_conv2d(x, dw_weight, dw_bias, pw_weight, pw_bias, self.stride, self.padding, self.dilation,
                            *self._activations())

    def explain(self, x: Tensor, pass_: str = "forward") -> Decision:
        """Which backend ``self(x)`` (or its backward) takes, and why."""
        operands = layer_operands(x, self.in_channels, self.dw_weight, self.dw_bias, self.pw_weight, self.pw_bias)
        return explain(*operands, self.stride, self.padding, self.dilation, *self._activations(), pass_=pass_)

    def spec(self, input_shape, dtype: torch.dtype | None = None, channels_last: bool = False) -> DwSepSpec:
        batch, _, height, width = input_shape
        return DwSepSpec(batch, self.in_channels, self.out_channels, height, width, self.kernel_size, self.stride,
                         self.padding, self.dilation, self.dw_bias is not None, self.pw_bias is not None,
                         self.activation, self.out_activation, dtype_name(dtype or self.dw_weight.dtype),
                         channels_last)

    def cost(self, input_shape) -> Cost:
        return self.spec(input_shape).cost()

    @classmethod
    def from_modules(cls, dw_conv: nn.Conv2d, bn: nn.BatchNorm2d | None, act, pw_conv: nn.Conv2d,
                     bn2: nn.BatchNorm2d | None = None, out_act=None) -> "DepthwiseSeparableConv2d":
        """Fold ``pw_conv -> bn2 -> out_act`` after ``dw_conv -> bn -> act`` into one fused layer (inference).

        BatchNorms must be in eval mode (their running statistics are folded into the preceding conv's
        weight and bias); ``dw_conv`` must be depthwise (groups = in = out channels, square odd kernel,
        equal strides 1 or 2, zero padding) and ``pw_conv`` a 1 x 1, stride 1, ungrouped conv.
        ``act``/``out_act``: None, nn.Identity, nn.ReLU, nn.ReLU6 (or their names).
        """
        for name, conv in (("dw_conv", dw_conv), ("pw_conv", pw_conv)):
            if not isinstance(conv, nn.Conv2d):
                raise TypeError(f"{name} must be an nn.Conv2d, got {type(conv).__name__}")
        channels = dw_conv.in_channels
        k = dw_conv.kernel_size[0]
        if dw_conv.groups != channels or dw_conv.out_channels != channels:
            raise ValueError(f"dw_conv={dw_conv} is not depthwise: expected groups = in_channels = out_channels "
                             f"= {channels}")
        if (dw_conv.kernel_size != (k, k) or dw_conv.stride[0] != dw_conv.stride[1]
                or dw_conv.padding[0] != dw_conv.padding[1] or dw_conv.dilation[0] != dw_conv.dilation[1]
                or dw_conv.padding_mode != "zeros" or isinstance(dw_conv.padding, str)):
            raise ValueError(f"dw_conv={dw_conv} must have a square kernel, equal strides, paddings and "
                             "dilations, and zero padding")
        if (pw_conv.kernel_size != (1, 1) or pw_conv.stride != (1, 1) or pw_conv.groups != 1
                or pw_conv.padding != (0, 0) or pw_conv.in_channels != channels):
            raise ValueError(f"pw_conv={pw_conv} must be a 1 x 1, stride 1, unpadded, ungrouped conv with "
                             f"in_channels={channels}")
        dw_affine = _bn_affine(bn, "bn", channels)
        pw_affine = _bn_affine(bn2, "bn2", pw_conv.out_channels)
        weight = dw_conv.weight
        layer = cls(channels, pw_conv.out_channels, k, dw_conv.stride[0], dw_conv.padding[0], dw_conv.dilation[0],
                    True, _activation_of(act), _activation_of(out_act), device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            for conv, affine, w_param, b_name in ((dw_conv, dw_affine, layer.dw_weight, "dw_bias"),
                                                  (pw_conv, pw_affine, layer.pw_weight, "pw_bias")):
                w = conv.weight.detach()
                b = conv.bias.detach() if conv.bias is not None else None
                if affine is not None:
                    scale, shift = affine
                    w = w * scale[:, None, None, None]
                    b = shift + (b * scale if b is not None else 0)
                w_param.copy_(w)
                if b is None:
                    setattr(layer, b_name, None)
                else:
                    getattr(layer, b_name).copy_(b)
        return layer

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, bias={self.dw_bias is not None}, "
                f"activation={self.activation}, out_activation={self.out_activation}")
