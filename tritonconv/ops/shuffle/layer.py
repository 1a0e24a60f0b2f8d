"""``ShuffledGroupConv2d`` (grouped 1 x 1 conv, output channel-shuffled in its stores) and
``ShuffleUnit`` (the ShuffleNet V1 unit built on it)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tritonconv._layout import conv_default_init_, layer_operands
from tritonconv._validation import check_bool, check_int_choice, check_positive_int, dtype_name
from tritonconv.accounting import Cost
from tritonconv.dispatch import Decision
from tritonconv.ops.shuffle.op import explain, shuffle_conv1x1
from tritonconv.ops.shuffle.spec import ShuffleConvSpec, validate_hyperparameters


class ShuffledGroupConv2d(nn.Module):
    """``channel_shuffle(conv2d(x, weight, bias, groups=groups), shuffle_groups)`` in one Triton kernel.

    Parameters: ``weight`` [N, C/groups, 1, 1] (exactly ``nn.Conv2d(C, N, 1, groups=groups).weight``),
    ``bias`` [N] or None. The shuffle (SPEC section 6 direction) is the store address of the conv: it
    costs no pass over memory. ``shuffle_groups=1`` is a plain grouped 1 x 1 conv.
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int = 1, shuffle_groups: int = 1,
                 bias: bool = False, device=None, dtype=None):
        super().__init__()
        check_bool("bias", bias)
        validate_hyperparameters(in_channels, out_channels, groups, shuffle_groups)
        self.in_channels, self.out_channels, self.groups, self.shuffle_groups = (
            in_channels, out_channels, groups, shuffle_groups)
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, 1, 1, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        conv_default_init_(self.in_channels // self.groups, self.weight, self.bias)

    def _operands(self, x: Tensor):
        return layer_operands(x, self.in_channels, self.weight, self.bias)

    def forward(self, x: Tensor) -> Tensor:
        x, weight, bias = self._operands(x)
        return shuffle_conv1x1(x, weight, bias, self.groups, self.shuffle_groups)

    def explain(self, x: Tensor, pass_: str = "forward") -> Decision:
        x, weight, bias = self._operands(x)
        return explain(x, weight, bias, self.groups, self.shuffle_groups, pass_)

    def spec(self, input_shape, dtype: torch.dtype | None = None, channels_last: bool = False) -> ShuffleConvSpec:
        batch, _, height, width = input_shape
        return ShuffleConvSpec(batch, self.in_channels, self.out_channels, height, width, self.groups,
                               self.shuffle_groups, self.bias is not None, dtype_name(dtype or self.weight.dtype),
                               channels_last)

    def cost(self, input_shape) -> Cost:
        return self.spec(input_shape).cost()

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, groups={self.groups}, "
                f"shuffle_groups={self.shuffle_groups}, bias={self.bias is not None}")


class ShuffleUnit(nn.Module):
    """ShuffleNet V1 unit: grouped 1 x 1 -> BN -> ReLU -> shuffle -> depthwise 3 x 3 (stride) -> BN ->
    grouped 1 x 1 -> BN, then ``relu(x + branch)`` (stride 1, in == out) or
    ``relu(cat(avg_pool3x3s2(x), branch))`` (stride 2, the branch makes out - in channels).

    The bottleneck has ``out_channels // 4`` channels. The shuffle is in the first conv's stores
    (``ShuffledGroupConv2d``), so it costs no pass over memory; BN and ReLU act per channel and
    commute with it, so ``bn1`` normalises the bottleneck channels in shuffled order (its channel i
    is the shuffled channel i). ``grouped_first=False`` makes the first 1 x 1 dense (ShuffleNet's
    first stage, whose input has too few channels to group). The depthwise conv is torch's.
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int = 3, stride: int = 1,
                 grouped_first: bool = True, device=None, dtype=None):
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("out_channels", out_channels)
        check_positive_int("groups", groups)
        check_int_choice("stride", stride, (1, 2))  # 1: residual add, 2: avg-pool concat
        if stride == 1 and in_channels != out_channels:
            raise ValueError(f"stride=1 adds the input: in_channels={in_channels} must equal "
                             f"out_channels={out_channels}")
        if stride == 2 and out_channels <= in_channels:
            raise ValueError(f"stride=2 concatenates the input: out_channels={out_channels} must exceed "
                             f"in_channels={in_channels}")
        mid = out_channels // 4
        branch_out = out_channels - in_channels if stride == 2 else out_channels
        if mid == 0 or mid % groups or branch_out % groups:
            raise ValueError(f"groups={groups} must divide the bottleneck (out_channels // 4 = {mid}) and the "
                             f"branch output ({branch_out} channels)")
        self.in_channels, self.out_channels, self.groups, self.stride = in_channels, out_channels, groups, stride
        factory = {"device": device, "dtype": dtype}
        self.conv1 = ShuffledGroupConv2d(in_channels, mid, groups if grouped_first else 1, groups, **factory)
        self.bn1 = nn.BatchNorm2d(mid, **factory)
        self.dwconv = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False, **factory)
        self.bn2 = nn.BatchNorm2d(mid, **factory)
        self.conv2 = ShuffledGroupConv2d(mid, branch_out, groups, 1, **factory)
        self.bn3 = nn.BatchNorm2d(branch_out, **factory)

    def forward(self, x: Tensor) -> Tensor:
        # [B, mid, H, W], already shuffled
        branch = F.relu(self.bn1(self.conv1(x)))
        branch = self.bn2(self.dwconv(branch))  # [B, mid, Ho, Wo]
        branch = self.bn3(self.conv2(branch))  # [B, branch_out, Ho, Wo]
        if self.stride == 1:
            return F.relu(x + branch)
        return F.relu(torch.cat([F.avg_pool2d(x, 3, 2, 1), branch], dim=1))

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, groups={self.groups}, stride={self.stride}"
