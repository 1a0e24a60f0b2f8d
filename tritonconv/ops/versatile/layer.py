"""``VersatileConv2d``: the nn.Module users put in their models."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tritonconv._layout import conv_default_init_, layer_operands
from tritonconv._validation import check_bool, dtype_name
from tritonconv._weights import TapsMajorWeights, empty_taps_major
from tritonconv.accounting import Cost
from tritonconv.dispatch import Decision
from tritonconv.ops.versatile import reference
from tritonconv.ops.versatile.op import explain, versatile_conv2d
from tritonconv.ops.versatile.spec import VersatileSpec, spatial_secondaries, validate_hyperparameters


class VersatileConv2d(TapsMajorWeights):
    """Versatile filters (NeurIPS 2018), SPEC section 4, all secondaries in one Triton kernel.

    Each of the ``n_w = O / (s_num n_c)`` primary k x k filters yields ``s_num = ceil(k/2)`` spatial
    secondaries (the primary with its outer s rings zeroed, all applied with the primary's padding,
    stride and dilation; ``padding=None`` means ``dilation * (k // 2)``) on ``n_c = delta/g + 1``
    channel windows ``[j g, j g + C - delta)``. Output channel ``o = (s n_c + j) n_w + f``. Requires
    ``g | delta`` and ``O % (s_num n_c) == 0``.

    Parameters: ``weight`` [n_w, C - delta, k, k], ``bias`` [O] or None. The weight is laid out
    taps-major ([k, k, n_w, C - delta] in memory, what the kernels read without a copy) and stays so
    through ``.to``, ``.half()``, ``load_state_dict`` and deepcopy (see ``tritonconv._weights``).
    **Choices** (SPEC): only the C - delta input slices that are read are stored (``from_original``
    loads the original ``[n_w, C, k, k]`` layout); ``bias=False`` works; the masked form is defined
    for any padding, dilation and non-square inputs, and equals the original wherever that runs.
    Under autocast, input and weights are cast to the autocast dtype.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 5, stride: int = 1,
                 padding: int | None = None, dilation: int = 1, bias: bool = True, delta: int = 0, g: int = 1,
                 device=None, dtype=None):
        super().__init__()
        check_bool("bias", bias)
        validate_hyperparameters(in_channels, out_channels, kernel_size, stride, padding, dilation, delta, g)
        self.in_channels, self.out_channels, self.kernel_size, self.stride = (
            in_channels, out_channels, kernel_size, stride)
        self.padding = dilation * (kernel_size // 2) if padding is None else padding
        self.dilation, self.delta, self.g = dilation, delta, g
        n_w = out_channels // (spatial_secondaries(kernel_size) * (delta // g + 1))
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(empty_taps_major((n_w, in_channels - delta, kernel_size, kernel_size), **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def taps_major_weights(self):
        return (self.weight,)

    def reset_parameters(self) -> None:
        # the primary filter's fan-in
        conv_default_init_((self.in_channels - self.delta) * self.kernel_size**2, self.weight, self.bias)

    def _operands(self, x: Tensor):
        return layer_operands(x, self.in_channels, self.weight, self.bias)

    def _hyper(self) -> tuple:
        return self.out_channels, self.stride, self.padding, self.dilation, self.delta, self.g

    def forward(self, x: Tensor) -> Tensor:
        x, weight, bias = self._operands(x)
        return versatile_conv2d(x, weight, bias, *self._hyper())

    def explain(self, x: Tensor, pass_: str = "forward") -> Decision:
        """Which backend ``self(x)`` (or its backward) takes, and why."""
        x, weight, bias = self._operands(x)
        return explain(x, weight, bias, *self._hyper(), pass_=pass_)

    def spec(self, input_shape, dtype: torch.dtype | None = None, channels_last: bool = False) -> VersatileSpec:
        batch, _, height, width = input_shape
        return VersatileSpec(batch, self.in_channels, self.out_channels, height, width, self.kernel_size, self.stride,
                             self.padding, self.dilation, self.delta, self.g, self.bias is not None,
                             dtype_name(dtype or self.weight.dtype), channels_last)

    def cost(self, input_shape) -> Cost:
        return self.spec(input_shape).cost()

    @classmethod
    def from_original(cls, weight: Tensor, bias: Tensor | None, out_channels: int, stride: int = 1,
                      padding: int | None = None, dilation: int = 1, delta: int = 0, g: int = 1) -> "VersatileConv2d":
        """A layer from a checkpoint of the original code: ``weight`` [n_w, C, k, k] (its last ``delta``
        input slices are never read and are dropped), ``bias`` [O] or None."""
        if not isinstance(weight, Tensor) or weight.dim() != 4:
            raise ValueError(f"weight must be a 4-dimensional tensor [n_w, C, k, k], got "
                             f"{tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__}")
        n_w, in_channels, k, _ = weight.shape
        layer = cls(in_channels, out_channels, k, stride, padding, dilation, bias is not None, delta, g,
                    device=weight.device, dtype=weight.dtype)
        ours = reference.from_original_weight(weight.detach(), delta)
        if tuple(ours.shape) != tuple(layer.weight.shape):
            raise ValueError(f"weight has shape {tuple(weight.shape)}; out_channels={out_channels}, delta={delta}, "
                             f"g={g} expect {(layer.weight.shape[0], in_channels, k, k)}")
        with torch.no_grad():
            layer.weight.copy_(ours)
            if bias is not None:
                layer.bias.copy_(bias)
        return layer

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, bias={self.bias is not None}, "
                f"delta={self.delta}, g={self.g}")
