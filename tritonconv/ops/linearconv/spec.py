"""LinearConvSpec: one description of a LinearConv2d call (SPEC section 5) shared by the layer, its cost
and the tests; ``validate_hyperparameters`` is the constructor's error checking."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from tritonconv._spec import ConvShape
from tritonconv._validation import check_positive_int
from tritonconv.accounting import Cost
from tritonconv.ops.linearconv.dense import DenseConvSpec

VARIANTS = ("vanilla", "lowrank", "rankratio", "sparse")


def check_nonnegative_int(name: str, value) -> int:
    return check_positive_int(name, value, minimum=0)


def resolve_rank(variant: str, rank, primaries: int, combined: int) -> int | None:
    """The inner dimension r of ``L = coeff_u @ coeff_v`` (None for the full-matrix variants)."""
    if variant == "lowrank":
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= min(primaries, combined):
            raise ValueError(f"rank={rank!r} must be an int in [1, {min(primaries, combined)}] for variant='lowrank' "
                             f"(at most min(P={primaries}, F-P={combined}))")
        return rank
    if variant == "rankratio":
        if isinstance(rank, bool) or not isinstance(rank, (int, float)) or not 0 < rank <= 1:
            raise ValueError(f"rank={rank!r} must be a float in (0, 1] for variant='rankratio' (r = int(P*rank))")
        r = int(primaries * rank)
        if r < 1:
            raise ValueError(f"rank={rank!r} gives r = int(P*rank) = int({primaries}*{rank}) = 0; expected at least 1")
        return r
    if rank is not None:
        raise ValueError(f"rank={rank!r} is only used by variant='lowrank' or 'rankratio', not {variant!r}")
    return None


def validate_hyperparameters(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, variant,
                             rank, sparsity) -> int | None:
    """Raise on anything the layer cannot be; return the resolved rank r (or None)."""
    check_positive_int("in_channels", in_channels)
    check_positive_int("out_channels", out_channels, minimum=2)  # P = F // 2 must be at least 1
    check_positive_int("kernel_size", kernel_size)
    check_positive_int("stride", stride)
    check_nonnegative_int("padding", padding)
    check_positive_int("dilation", dilation)
    check_positive_int("groups", groups)
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"groups={groups} must divide both in_channels={in_channels} and out_channels={out_channels}")
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} is not a LinearConv variant; expected one of {VARIANTS}")
    primaries = out_channels // 2
    if variant == "sparse":
        if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
            raise ValueError(f"sparsity={sparsity!r} must be a float in [0, 1) for variant='sparse' "
                             "(the target fraction of zeros in L)")
    elif sparsity is not None:
        raise ValueError(f"sparsity={sparsity!r} is only used by variant='sparse', not {variant!r}")
    return resolve_rank(variant, rank, primaries, out_channels - primaries)


@dataclass(frozen=True)
class LinearConvSpec(ConvShape):
    kernel_size: int
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    groups: int = 1
    bias: bool = True
    variant: str = "vanilla"
    rank: int | float | None = None  # as passed to the layer: an int (lowrank) or a ratio (rankratio)
    sparsity: float | None = None
    dtype: str = "float32"

    def __post_init__(self):
        validate_hyperparameters(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                                 self.dilation, self.groups, self.variant, self.rank, self.sparsity)
        self.validate_shape()

    @functools.cached_property
    def primaries(self) -> int:
        """P = F // 2 stored filters."""
        return self.out_channels // 2

    @functools.cached_property
    def combined(self) -> int:
        """F - P filters that are linear combinations of the primaries."""
        return self.out_channels - self.primaries

    @functools.cached_property
    def inner_rank(self) -> int | None:
        return resolve_rank(self.variant, self.rank, self.primaries, self.combined)

    @functools.cached_property
    def dense(self) -> DenseConvSpec:
        """The ordinary conv that runs once the filter bank is composed."""
        return DenseConvSpec(self.batch, self.in_channels, self.out_channels, self.height, self.width,
                             self.kernel_size, self.stride, self.padding, self.dilation, self.groups, self.bias,
                             self.dtype)

    def coefficient_count(self) -> int:
        r = self.inner_rank
        return self.combined * self.primaries if r is None else r * (self.combined + self.primaries)

    def parameter_count(self) -> int:
        """Vanilla ``P*C/groups*k^2 + (F-P)*P`` (+F); low-rank ``r*(F-P + P)`` coefficients instead.

        The sparse variant stores the whole ``coeff`` (its mask is a buffer, not a parameter)."""
        primary = self.primaries * (self.in_channels // self.groups) * self.kernel_size**2
        return primary + self.coefficient_count() + (self.out_channels if self.bias else 0)

    def cost(self) -> Cost:
        """Inference cost: exactly the dense conv's, once the bank is built (SPEC section 5)."""
        return self.dense.cost()

    def composition_macs(self) -> int:
        """MACs of building the bank, paid per training step (and once in eval mode)."""
        filter_size = (self.in_channels // self.groups) * self.kernel_size**2
        r = self.inner_rank
        lr = 0 if r is None else self.combined * r * self.primaries
        return lr + self.combined * self.primaries * filter_size

    @functools.cached_property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)
