"""``GhostModule`` (GhostNet, CVPR 2020; SPEC section 6) with its cheap operation on our depthwise kernel."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tritonconv._layout import autocast_enabled, autocast_operands
from tritonconv._validation import check_bool, check_input, check_int_choice, check_positive_int, check_same, dtype_name
from tritonconv.accounting import Cost
from tritonconv.dispatch import Decision
from tritonconv.ops.depthwise.layout import TapsMajorWeights
from tritonconv.ops.depthwise.op import depthwise_conv2d, ghost_concat
from tritonconv.ops.depthwise.op import explain as depthwise_explain
from tritonconv.ops.depthwise.spec import DepthwiseSpec, validate_window


def _folded(bn: nn.BatchNorm2d, weight: Tensor, rows: int) -> tuple[Tensor, Tensor]:
    """The first ``rows`` filters of ``weight`` with eval-mode ``bn`` folded in, and the bias it becomes."""
    scale = torch.rsqrt(bn.running_var[:rows] + bn.eps)
    scale = scale * bn.weight[:rows] if bn.weight is not None else scale
    shift = -bn.running_mean[:rows] * scale
    shift = shift + bn.bias[:rows] if bn.bias is not None else shift
    return weight[:rows] * scale[:, None, None, None], shift


class GhostModule(TapsMajorWeights):
    """``m = ceil(out/ratio)`` intrinsic maps from a k x k conv (+BN, ReLU), ``m*(ratio-1)`` ghost maps from
    a depthwise ``dw_size`` conv of them (channel multiplier ratio-1, +BN, ReLU); output
    ``cat([intrinsic, ghost])[:, :out]``. ``relu=False`` drops both ReLUs (GhostNet's second module).

    Submodules and state_dict keys are GhostNet's own (``primary_conv.0/1``, ``cheap_operation.0/1``),
    so its checkpoints load unchanged. Parameters: ``m*in*k*k + 2m + m*(ratio-1)*(dw_size^2 + 2)``.

    **Inference** (BatchNorms in eval mode): both BNs are folded; one depthwise launch reads the
    intrinsic maps once and writes them and the ghost maps (BN and ReLU fused, only the ``out - m`` that
    are kept) straight into one preallocated output: no torch.cat, no ghost maps thrown away.
    **Training** (batch statistics): BN needs the whole conv output first, so the ghost maps come from
    our depthwise kernel, then BN, ReLU and torch.cat, exactly as the original.

    ``cheap_operation.0.weight`` is laid out taps-major ([dw_size, dw_size, m*(ratio-1)] in memory, what
    the depthwise kernels read without a copy; BN folding keeps that layout) and stays so through ``.to``
    and ``load_state_dict`` of the module (see ``depthwise.layout``).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, ratio: int = 2, dw_size: int = 3,
                 stride: int = 1, relu: bool = True, device=None, dtype=None):
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("out_channels", out_channels)
        check_positive_int("kernel_size", kernel_size)
        check_positive_int("ratio", ratio, minimum=2)
        check_positive_int("dw_size", dw_size)
        validate_window(dw_size, 1, dw_size // 2, 1, kernel_name="dw_size")
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size={kernel_size} must be odd: padding k//2 keeps the spatial size")
        check_int_choice("stride", stride, (1, 2))
        check_bool("relu", relu)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.ratio, self.dw_size, self.stride, self.relu = ratio, dw_size, stride, relu
        self.init_channels = math.ceil(out_channels / ratio)
        self.new_channels = self.init_channels * (ratio - 1)
        factory = {"device": device, "dtype": dtype}
        self.primary_conv = nn.Sequential(
            nn.Conv2d(in_channels, self.init_channels, kernel_size, stride, kernel_size // 2, bias=False, **factory),
            nn.BatchNorm2d(self.init_channels, **factory),
            nn.ReLU(inplace=True) if relu else nn.Sequential(),
        )
        self.cheap_operation = nn.Sequential(
            nn.Conv2d(self.init_channels, self.new_channels, dw_size, 1, dw_size // 2, groups=self.init_channels,
                      bias=False, **factory),
            nn.BatchNorm2d(self.new_channels, **factory),
            nn.ReLU(inplace=True) if relu else nn.Sequential(),
        )
        self.relay_depthwise_weights()

    def depthwise_weights(self):
        return (self.cheap_operation[0].weight,)

    @property
    def kept_ghost_channels(self) -> int:
        """Ghost maps that survive the ``[:, :out]`` cut."""
        return self.out_channels - self.init_channels

    def _batch_statistics(self) -> bool:
        return any(bn.training or bn.running_mean is None for bn in (self.primary_conv[1], self.cheap_operation[1]))

    def _intrinsic(self, x: Tensor) -> Tensor:
        conv, bn, _ = self.primary_conv
        if self._batch_statistics():
            y = bn(conv(x))
        else:
            weight, bias = _folded(bn, conv.weight, self.init_channels)
            x, weight, bias = autocast_operands(x, weight, bias)
            y = F.conv2d(x, weight, bias, self.stride, self.kernel_size // 2)
        return F.relu(y) if self.relu else y

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.in_channels)
        if not autocast_enabled(x):
            check_same("input", x, self.primary_conv[0].weight, "primary_conv.0.weight")
        intrinsic = self._intrinsic(x)
        conv, bn, _ = self.cheap_operation
        activation = "relu" if self.relu else None
        if self._batch_statistics():
            intrinsic, weight = autocast_operands(intrinsic, conv.weight)
            ghost = bn(depthwise_conv2d(intrinsic, weight, None, 1, self.dw_size // 2, 1, None))
            ghost = F.relu(ghost) if self.relu else ghost
            return torch.cat([intrinsic, ghost], 1)[:, :self.out_channels]
        if self.kept_ghost_channels == 0:  # out_channels=1: nothing of the cheap operation is kept
            return intrinsic
        weight, bias = _folded(bn, conv.weight, self.kept_ghost_channels)
        intrinsic, weight, bias = autocast_operands(intrinsic, weight, bias)
        return ghost_concat(intrinsic, weight, bias, self.ratio - 1, activation)

    def explain(self, x: Tensor, pass_: str = "forward") -> Decision:
        """Which backend the cheap (depthwise) operation of ``self(x)`` takes, and why."""
        with torch.no_grad():
            intrinsic = self._intrinsic(x)
        conv = self.cheap_operation[0]
        return depthwise_explain(intrinsic, conv.weight, None, 1, self.dw_size // 2, 1, None, pass_)

    def cheap_spec(self, input_shape, dtype: torch.dtype | None = None, channels_last: bool = False) -> DepthwiseSpec:
        """The inference path's single depthwise launch (intrinsic maps in, the whole output out)."""
        batch, _, height, width = input_shape
        return DepthwiseSpec(batch, self.init_channels, self.kept_ghost_channels, *self._intrinsic_size(height, width),
                             self.dw_size, 1, self.dw_size // 2, 1, self.ratio - 1, True,
                             "relu" if self.relu else "none", dtype_name(dtype or self.primary_conv[0].weight.dtype),
                             channels_last,
                             concat_input=True)

    def cost(self, input_shape) -> Cost:
        """The primary conv plus the cheap operation as the original computes it (all ghost maps)."""
        height, width = self._intrinsic_size(input_shape[2], input_shape[3])
        pixels = input_shape[0] * height * width
        primary_macs = pixels * self.init_channels * self.in_channels * self.kernel_size**2
        cheap_macs = pixels * self.new_channels * self.dw_size**2
        itemsize = self.primary_conv[0].weight.dtype.itemsize
        input_bytes = input_shape[0] * self.in_channels * input_shape[2] * input_shape[3] * itemsize
        params = sum(p.numel() for p in self.parameters()) * itemsize
        return Cost(macs=primary_macs + cheap_macs,
                    bytes=input_bytes + params + pixels * self.out_channels * itemsize)

    def _intrinsic_size(self, height: int, width: int) -> tuple[int, int]:
        pad = self.kernel_size // 2
        return tuple((s + 2 * pad - self.kernel_size) // self.stride + 1 for s in (height, width))

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, ratio={self.ratio}, "
                f"dw_size={self.dw_size}, stride={self.stride}, relu={self.relu}")

