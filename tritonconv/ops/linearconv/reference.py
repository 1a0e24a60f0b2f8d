"""LinearConv2d's filter-bank composition, its least-squares fit to a dense conv, the correlation of the
primary filters, and the float64 oracle the tests compare against (SPEC section 5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# The bank is composed with torch.matmul + torch.cat rather than a Triton kernel. It is a skinny GEMM
# [F-P, P] x [P, C*k^2] (at most 256 x 256 x 4608 in VGG), so cuBLAS already runs it near peak; a kernel
# writing straight into the second half of a preallocated bank would save only the cat's copy of
# F*C*k^2 elements (a few MB), well under 1% of one training step's conv traffic, and in eval mode
# the bank is built once. torch ops also give the backward, autocast and torch.compile for free.


def compose_bank(weight: Tensor, coefficients: Tensor) -> Tensor:
    """``W = cat([Wp, (L @ Wp.reshape(P, -1)).reshape(F-P, C/groups, k, k)])``, primaries first."""
    primaries = weight.shape[0]
    combined = coefficients @ weight.reshape(primaries, -1)
    return torch.cat([weight, combined.reshape(coefficients.shape[0], *weight.shape[1:])])


def fit_coefficients(dense_weight: Tensor) -> Tensor:
    """L [F-P, P] minimising ``||L @ Wp - Wr||_F`` (Wp: the first P filters, Wr: the rest), in float64.

    ``pinv(Wp) = Wp^T pinv(Wp Wp^T)``: the same minimum-norm solution when the primaries are
    rank-deficient (fewer weights per filter than primaries, as in a 3 -> 64 first conv), but through a
    P x P symmetric eigen-decomposition instead of an SVD of the P x C*k^2 matrix (seconds per VGG layer).
    """
    filters = dense_weight.shape[0]
    flat = dense_weight.detach().reshape(filters, -1).double()
    primaries = filters // 2
    primary = flat[:primaries]
    return flat[primaries:] @ primary.t() @ torch.linalg.pinv(primary @ primary.t(), hermitian=True)


def low_rank_factors(coefficients: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """(coeff_u [F-P, r], coeff_v [r, P]): the best rank-r approximation of L (truncated SVD), with
    the singular values split evenly between the factors."""
    u, s, vh = torch.linalg.svd(coefficients, full_matrices=False)
    root = s[:rank].sqrt()
    return u[:, :rank] * root, root[:, None] * vh[:rank]


def primary_correlation(weight: Tensor, eps: float = 1e-12) -> Tensor:
    """Pearson correlation [P, P] between the rows of ``weight.reshape(P, -1)``.

    ``eps`` inside the square root keeps constant rows (zero variance) finite, with finite gradients:
    their correlations are 0, where numpy's corrcoef would give NaN.
    """
    rows = weight.reshape(weight.shape[0], -1)
    if rows.dtype in (torch.float16, torch.bfloat16):
        rows = rows.float()  # sums of squares underflow in half precision
    centred = rows - rows.mean(dim=1, keepdim=True)
    norms = (centred.square().sum(dim=1) + eps).sqrt()
    return (centred @ centred.t()) / (norms[:, None] * norms[None, :])


def reference_forward(x: Tensor, weight: Tensor, coefficients: Tensor, bias: Tensor | None, stride: int,
                      padding: int, dilation: int, groups: int) -> Tensor:
    """The SPEC's definition with F.conv2d: the float64 test oracle."""
    return F.conv2d(x, compose_bank(weight, coefficients), bias, stride, padding, dilation, groups)
