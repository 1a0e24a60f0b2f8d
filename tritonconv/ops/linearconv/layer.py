"""``LinearConv2d``: half the filters stored, the other half linear combinations of them (WACV 2021)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from tritonconv._layout import autocast_operands, conv_default_init_
from tritonconv._validation import check_bool, check_input, check_positive_int, dtype_name
from tritonconv.accounting import Cost
from tritonconv.dispatch import Decision
from tritonconv.ops.linearconv import dense, reference
from tritonconv.ops.linearconv.spec import LinearConvSpec, validate_hyperparameters


class LinearConv2d(nn.Module):
    """LinearConv (SPEC section 5): ``P = out_channels // 2`` primary filters ``weight``
    [P, C/groups, k, k] and ``F - P`` filters that are linear combinations of them,
    ``W = cat([Wp, (L @ Wp.reshape(P, -1)).reshape(F-P, C/groups, k, k)])``; then
    ``conv(x, W, bias, stride, padding, dilation, groups)``. ``bias`` [F] or None.

    Variants (how L [F-P, P] is stored):

    - ``"vanilla"``: ``coeff`` [F-P, P].
    - ``"lowrank"``: ``L = coeff_u @ coeff_v``, ``coeff_u`` [F-P, r], ``coeff_v`` [r, P], ``rank=r`` an int.
    - ``"rankratio"``: the same with ``r = int(P * rank)``, ``rank`` a float in (0, 1].
    - ``"sparse"``: ``L = coeff * mask``, ``coeff`` [F-P, P] and ``mask`` a bool buffer. **Schedule:**
      every training-mode forward call re-thresholds the mask by magnitude, keeping the largest
      ``|coeff|`` so that exactly ``floor(target * (F-P)*P)`` entries of L are zero, where the target
      ramps linearly from 0 to ``sparsity`` over the first ``sparsity_ramp`` training-mode calls
      (0: at once) and then stays there. Pruned entries get no gradient but are re-thresholded with
      the rest, so one can come back if others shrink below it. The step count is the buffer
      ``mask_step``; both buffers are in the state_dict. Eval mode never changes the mask.

    **The dense conv:** where the call fits (odd k, ``padding=(k-1)//2``, stride 1 or 2, dilation 1,
    groups 1) the composed bank runs through the Triton implicit-GEMM conv (``tritonconv.hetconv2d``
    with p=1, itself dispatched per shape against cuDNN); otherwise through ``F.conv2d`` (cuDNN).
    ``explain`` says which and why.

    **The bank:** composed with torch.matmul on every call (see ``reference`` for why not a kernel),
    in training and in eval mode alike; autograd reaches ``weight`` and the coefficients. It costs
    ``(F-P) * P * C/groups * k^2`` MACs, whatever the batch. It is not cached
    across calls: no cache key sees every write (writes through ``.data``, as EMA code makes them,
    change neither a parameter's ``_version`` nor its storage), and a stale bank would be a silently
    wrong answer.

    Parameters vanilla: ``P*C/groups*k^2 + (F-P)*P`` (+F).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1, groups: int = 1, bias: bool = True, variant: str = "vanilla", rank=None,
                 sparsity=None, *, sparsity_ramp: int = 1000, device=None, dtype=None):
        super().__init__()
        check_bool("bias", bias)
        r = validate_hyperparameters(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                                     variant, rank, sparsity)
        check_positive_int("sparsity_ramp", sparsity_ramp, minimum=0)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.variant, self.rank, self.sparsity, self.sparsity_ramp = variant, rank, sparsity, sparsity_ramp
        self.primaries, self.combined = out_channels // 2, out_channels - out_channels // 2
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(self.primaries, in_channels // groups, kernel_size, kernel_size,
                                               **factory))
        if r is None:
            self.coeff = nn.Parameter(torch.empty(self.combined, self.primaries, **factory))
        else:
            self.coeff_u = nn.Parameter(torch.empty(self.combined, r, **factory))
            self.coeff_v = nn.Parameter(torch.empty(r, self.primaries, **factory))
        if variant == "sparse":
            self.register_buffer("mask", torch.ones(self.combined, self.primaries, dtype=torch.bool, device=device))
            self.register_buffer("mask_step", torch.zeros((), dtype=torch.int64, device=device))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Primaries and bias as nn.Conv2d (uniform +-1/sqrt(fan_in)); coefficients with variance 1/P so a
        # combined filter has the primaries' scale.
        conv_default_init_((self.in_channels // self.groups) * self.kernel_size**2, self.weight, self.bias)
        with torch.no_grad():
            if hasattr(self, "coeff"):
                self.coeff.uniform_(-math.sqrt(3 / self.primaries), math.sqrt(3 / self.primaries))
            else:
                r = self.coeff_u.shape[1]
                self.coeff_u.uniform_(-math.sqrt(3 / r), math.sqrt(3 / r))
                self.coeff_v.uniform_(-math.sqrt(3 / self.primaries), math.sqrt(3 / self.primaries))

    # ---- the filter bank ---------------------------------------------------------------------------
    def coefficients(self) -> Tensor:
        """L [F-P, P]."""
        if self.variant == "sparse":
            # A copy of the mask: the next training forward re-thresholds the buffer in place, while
            # autograd still holds this one for the backward of an earlier forward.
            return self.coeff * self.mask.clone()
        if hasattr(self, "coeff"):
            return self.coeff
        return self.coeff_u @ self.coeff_v

    def filter_bank(self) -> Tensor:
        """The composed filters W [F, C/groups, k, k]."""
        return reference.compose_bank(self.weight, self.coefficients())

    @torch.no_grad()
    def _update_mask(self) -> None:
        self.mask_step += 1
        progress = (self.mask_step.double() / max(self.sparsity_ramp, 1)).clamp(max=1)  # 0 or 1: at once
        count = self.coeff.numel()
        zeros = torch.floor(progress * self.sparsity * count)
        # Rank of each |coeff| (ties broken by position): the `zeros` smallest are masked. Tensor ops only,
        # so no host sync and nothing for torch.compile to specialise on.
        order = self.coeff.detach().abs().flatten().argsort(stable=True)
        ranks = torch.empty_like(order).scatter_(0, order, torch.arange(count, device=order.device))
        self.mask.copy_((ranks >= zeros).reshape(self.mask.shape))

    # ---- forward -------------------------------------------------------------------------------
    def _operands(self, x: Tensor):
        check_input(x, self.in_channels, window=(self.kernel_size, self.padding, self.dilation))
        if self.variant == "sparse" and self.training:
            self._update_mask()
        x, bank, bias = autocast_operands(x, self.filter_bank(), self.bias)
        dense.check_bank(bank, x)
        return x, bank, bias

    def forward(self, x: Tensor) -> Tensor:
        x, bank, bias = self._operands(x)
        return dense.dense_conv2d(x, bank, bias, self.stride, self.padding, self.dilation, self.groups)

    def explain(self, x: Tensor, pass_: str = "forward") -> Decision:
        """Which backend ``self(x)`` (or its backward) takes, and why; runs nothing, changes no mask."""
        check_input(x, self.in_channels, window=(self.kernel_size, self.padding, self.dilation))
        with torch.no_grad():
            bank = reference.compose_bank(self.weight, self.coefficients())
        x, bank, bias = autocast_operands(x, bank, self.bias)
        dense.check_bank(bank, x)
        return dense.explain(x, bank, bias, self.stride, self.padding, self.dilation, self.groups, pass_)

    # ---- cost ----------------------------------------------------------------------------------
    def spec(self, input_shape, dtype: torch.dtype | None = None) -> LinearConvSpec:
        batch, _, height, width = input_shape
        return LinearConvSpec(batch, self.in_channels, self.out_channels, height, width, self.kernel_size,
                              self.stride, self.padding, self.dilation, self.groups, self.bias is not None,
                              self.variant, self.rank, self.sparsity, dtype_name(dtype or self.weight.dtype))

    def cost(self, input_shape) -> Cost:
        return self.spec(input_shape).cost()

    # ---- conversions ---------------------------------------------------------------------------
    @classmethod
    def from_conv2d(cls, conv: nn.Conv2d, variant: str = "vanilla", rank=None, sparsity=None,
                    **kwargs) -> "LinearConv2d":
        """A LinearConv2d whose primaries are the conv's first P filters and whose coefficients are the
        least-squares fit of its remaining F-P filters on them (truncated SVD for the low-rank variants;
        the sparse variant starts with a full mask and prunes along its ramp).

        This is a re-parameterisation, not an equivalence: F-P filters rarely lie in the span of the
        other P, so the converted layer approximates the conv and the network needs fine-tuning.
        """
        kind = validate_conv(conv)
        layer = cls(conv.in_channels, conv.out_channels, *kind, bias=conv.bias is not None, variant=variant,
                    rank=rank, sparsity=sparsity, device=conv.weight.device, dtype=conv.weight.dtype, **kwargs)
        fitted = reference.fit_coefficients(conv.weight)
        with torch.no_grad():
            layer.weight.copy_(conv.weight[:layer.primaries])
            if hasattr(layer, "coeff"):
                layer.coeff.copy_(fitted)
            else:
                u, v = reference.low_rank_factors(fitted, layer.coeff_u.shape[1])
                layer.coeff_u.copy_(u)
                layer.coeff_v.copy_(v)
            if conv.bias is not None:
                layer.bias.copy_(conv.bias)
        return layer.train(conv.training)

    def extra_repr(self) -> str:
        text = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}")
        if self.dilation != 1:
            text += f", dilation={self.dilation}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        text += f", bias={self.bias is not None}, variant={self.variant!r}"
        if self.rank is not None:
            text += f", rank={self.rank}"
        if self.sparsity is not None:
            text += f", sparsity={self.sparsity}"
        return text


def validate_conv(conv) -> tuple[int, int, int, int, int]:
    """(kernel_size, stride, padding, dilation, groups) of an nn.Conv2d a square-kernel layer can replace."""
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
    k = conv.kernel_size[0]
    problems = []
    if conv.kernel_size != (k, k):
        problems.append(f"kernel_size={conv.kernel_size} is not square")
    if isinstance(conv.padding, str) or conv.padding[0] != conv.padding[1]:
        problems.append(f"padding={conv.padding!r} is not one int for both sides")
    if conv.stride[0] != conv.stride[1]:
        problems.append(f"stride={conv.stride} differs between height and width")
    if conv.dilation[0] != conv.dilation[1]:
        problems.append(f"dilation={conv.dilation} differs between height and width")
    if conv.padding_mode != "zeros":
        problems.append(f"padding_mode={conv.padding_mode!r} is not 'zeros'")
    if problems:
        raise ValueError(f"cannot replace {conv}: " + "; ".join(problems))
    return k, conv.stride[0], conv.padding[0], conv.dilation[0], conv.groups
