"""``HetConv2d``: the nn.Module users put in their models."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tritonconv._layout import conv_default_init_, layer_operands
from tritonconv._validation import check_bool, dtype_name
from tritonconv.accounting import Cost
from tritonconv.dispatch import Decision
from tritonconv.ops.hetconv import reference
from tritonconv.ops.hetconv.op import explain, hetconv2d
from tritonconv.ops.hetconv.spec import HetConvSpec, validate_hyperparameters


class HetConv2d(nn.Module):
    """Heterogeneous-kernel convolution (HetConv, CVPR 2019), blocked layout (SPEC section 1).

    Each of the ``out_channels`` filters has ``in_channels/p`` k x k kernels, on the input channels
    of its own group (filter n is in group ``n // (out_channels/p)``), and 1 x 1 kernels at the centre
    tap on every other channel. Padding is ``(k-1)//2``; the stride applies to both kernel kinds with
    their centres aligned. ``kernel_size`` must be odd.

    Parameters: ``weight`` [N, M/p, k, k] (exactly ``nn.Conv2d(M, N, k, groups=p).weight``),
    ``weight_pw`` [N, M - M/p] (filter n's 1 x 1 kernels over the channels outside its group, in
    increasing channel order), ``bias`` [N] or None. Nothing else is stored or computed.

    Every call is dispatched to the Triton kernels or the cuDNN fallback (``explain`` says which and
    why); under autocast, input and weights are cast to the autocast dtype.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, p: int = 4,
                 bias: bool = False, device=None, dtype=None):
        super().__init__()
        check_bool("bias", bias)
        validate_hyperparameters(in_channels, out_channels, kernel_size, stride, p)
        self.in_channels, self.out_channels, self.kernel_size, self.stride, self.p = (
            in_channels, out_channels, kernel_size, stride, p)
        factory = {"device": device, "dtype": dtype}
        # channels_last: the layout the kernels read without a copy (launch.KERNEL_WEIGHT_FORMAT); the
        # shape, and so the state_dict, is nn.Conv2d(M, N, k, groups=p).weight's.
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // p, kernel_size, kernel_size, **factory,
                                               memory_format=torch.channels_last))
        self.weight_pw = nn.Parameter(torch.empty(out_channels, in_channels - in_channels // p, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    @property
    def fan_in(self) -> int:
        """Inputs each filter actually reads: (M/p) k^2 + M - M/p."""
        group_in = self.in_channels // self.p
        return group_in * self.kernel_size**2 + self.in_channels - group_in

    def reset_parameters(self) -> None:
        conv_default_init_(self.fan_in, self.weight, self.weight_pw, self.bias)  # the filter's true fan-in

    def _operands(self, x: Tensor):
        return layer_operands(x, self.in_channels, self.weight, self.weight_pw, self.bias)

    def forward(self, x: Tensor) -> Tensor:
        x, weight, weight_pw, bias = self._operands(x)
        return hetconv2d(x, weight, weight_pw, bias, self.stride, self.p)

    def explain(self, x: Tensor, pass_: str = "forward") -> Decision:
        """Which backend ``self(x)`` (or its backward) takes, and why."""
        x, weight, weight_pw, bias = self._operands(x)
        return explain(x, weight, weight_pw, bias, self.stride, self.p, pass_)

    def spec(self, input_shape, dtype: torch.dtype | None = None, channels_last: bool = False) -> HetConvSpec:
        batch, _, height, width = input_shape
        return HetConvSpec(batch, self.in_channels, self.out_channels, height, width, self.kernel_size, self.stride,
                           self.p, self.bias is not None, dtype_name(dtype or self.weight.dtype), channels_last)

    def cost(self, input_shape) -> Cost:
        return self.spec(input_shape).cost()

    # ---- conversions -------------------------------------------------------------------------------
    def dense_weight(self) -> Tensor:
        """The ordinary [N, M, k, k] conv weight computing the same function."""
        return reference.to_dense(self.weight, self.weight_pw, self.p)

    def to_dense(self) -> nn.Conv2d:
        """An ``nn.Conv2d`` computing exactly this layer's function."""
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride,
                         (self.kernel_size - 1) // 2, bias=self.bias is not None,
                         device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            conv.weight.copy_(self.dense_weight())
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, p: int = 4) -> "HetConv2d":
        """Keep the in-group k x k kernels and the centre tap of the others.

        For a trained dense conv this is a re-parameterisation, not an equivalence: the off-centre taps
        outside each group are dropped, so the network needs fine-tuning afterwards.
        """
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
        k = conv.kernel_size[0]
        if conv.kernel_size != (k, k) or conv.groups != 1 or conv.dilation != (1, 1):
            raise ValueError(f"conv={conv} must have a square kernel, groups=1 and dilation=1")
        if conv.padding != ((k - 1) // 2,) * 2 or conv.stride[0] != conv.stride[1] or conv.padding_mode != "zeros":
            raise ValueError(f"conv={conv} must have padding=(k-1)//2 with zeros, and equal strides")
        layer = cls(conv.in_channels, conv.out_channels, k, conv.stride[0], p, conv.bias is not None,
                    device=conv.weight.device, dtype=conv.weight.dtype)
        weight, weight_pw = reference.from_dense(conv.weight.detach(), p)
        with torch.no_grad():
            layer.weight.copy_(weight)
            layer.weight_pw.copy_(weight_pw)
            if conv.bias is not None:
                layer.bias.copy_(conv.bias)
        return layer

    @classmethod
    def from_shifted(cls, dense_weight: Tensor, p: int, bias: Tensor | None = None, stride: int = 1,
                     strict: bool = True) -> "HetConv2d":
        """Load a weight in the paper's shifted pattern ([N, M, k, k], filter n using k x k kernels on
        the channels c with (c - n) mod p == 0, as the published masked implementation stores it).

        The layer computes the same function up to the channel permutation ``sigma`` of
        ``reference.shifted_permutation``: feed it inputs permuted by sigma (channel c of the original
        to position sigma(c)) and its output channel sigma(n) is the original's channel n. In a stack
        of converted layers the permutations between them cancel. ``strict`` refuses weights that are
        non-zero off the pattern (the original would have masked them away).
        """
        if dense_weight.dim() != 4:
            raise ValueError(f"dense_weight must have 4 dimensions, got shape {tuple(dense_weight.shape)}")
        n, m, k, _ = dense_weight.shape
        validate_hyperparameters(m, n, k, stride, p)
        off_pattern = ~reference.shifted_pattern_mask(m, n, k, p).to(dense_weight.device)
        if strict and bool((dense_weight[off_pattern] != 0).any()):
            raise ValueError("dense_weight has non-zero taps outside the shifted HetConv pattern "
                             "(pass strict=False to drop them)")
        blocked = reference.dense_from_shifted(dense_weight.detach(), p)
        layer = cls(m, n, k, stride, p, bias is not None, device=dense_weight.device, dtype=dense_weight.dtype)
        weight, weight_pw = reference.from_dense(blocked, p)
        with torch.no_grad():
            layer.weight.copy_(weight)
            layer.weight_pw.copy_(weight_pw)
            if bias is not None:
                layer.bias.copy_(bias[reference.shifted_permutation(n, p).argsort()])
        return layer

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"p={self.p}, bias={self.bias is not None}")
