"""The published HetConv formulation through cuDNN (the fallback), dense-weight conversions, and the
paper's shifted pattern. The dense form is also the float64 test oracle."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tritonconv.ops.hetconv.spec import HetConvSpec


def outside_group_mask(in_channels: int, out_channels: int, p: int, device=None) -> torch.Tensor:
    """[N, M] bool: True where filter n reaches channel c through a 1 x 1 kernel."""
    group_of_filter = torch.arange(out_channels, device=device) // (out_channels // p)
    group_of_channel = torch.arange(in_channels, device=device) // (in_channels // p)
    return group_of_filter[:, None] != group_of_channel[None, :]


def expand_pointwise(weight_pw: torch.Tensor, in_channels: int, p: int) -> torch.Tensor:
    """weight_pw [N, M - M/p] -> the published full 1 x 1 weight [N, M, 1, 1] with zeros in-group."""
    n = weight_pw.shape[0]
    mask = outside_group_mask(in_channels, n, p, weight_pw.device)
    full = weight_pw.new_zeros(n, in_channels).masked_scatter(mask, weight_pw)
    return full[:, :, None, None]


def to_dense(weight: torch.Tensor, weight_pw: torch.Tensor, p: int) -> torch.Tensor:
    """The ordinary conv weight [N, M, k, k] that computes the same function."""
    n, group_in, k, _ = weight.shape
    in_channels = group_in * p
    group_out = n // p
    centre = k // 2
    dense = weight.new_zeros(n, in_channels, k, k)
    for g in range(p):
        filters = slice(g * group_out, (g + 1) * group_out)
        dense[filters, g * group_in:(g + 1) * group_in] = weight[filters]
    dense[:, :, centre, centre] += expand_pointwise(weight_pw, in_channels, p)[:, :, 0, 0]
    return dense


def from_dense(dense: torch.Tensor, p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, weight_pw) keeping the in-group k x k kernels and the centre tap of the others.

    Lossy for a trained dense conv: the off-centre taps outside each group are dropped.
    """
    n, in_channels, k, _ = dense.shape
    group_in, group_out = in_channels // p, n // p
    weight = torch.cat([dense[g * group_out:(g + 1) * group_out, g * group_in:(g + 1) * group_in] for g in range(p)])
    mask = outside_group_mask(in_channels, n, p, dense.device)
    weight_pw = dense[:, :, k // 2, k // 2][mask].reshape(n, in_channels - group_in)
    return weight.contiguous(), weight_pw.contiguous()


def shifted_permutation(channels: int, p: int) -> torch.Tensor:
    """sigma: channel c of the paper's shifted pattern is channel sigma[c] of the blocked layout."""
    c = torch.arange(channels)
    return (c % p) * (channels // p) + c // p


def shifted_pattern_mask(in_channels: int, out_channels: int, k: int, p: int) -> torch.Tensor:
    """[N, M, k, k] bool: the taps the paper's shifted pattern uses ((c - n) mod p == 0 -> k x k)."""
    n = torch.arange(out_channels)[:, None]
    c = torch.arange(in_channels)[None, :]
    full = ((c - n) % p == 0)[:, :, None, None].expand(out_channels, in_channels, k, k).clone()
    full[:, :, k // 2, k // 2] = True
    return full


def dense_from_shifted(dense_shifted: torch.Tensor, p: int) -> torch.Tensor:
    """Permute a shifted-pattern dense weight into the blocked layout (W_b[sigma(n), sigma(c)] = W_s[n, c])."""
    n, m = dense_shifted.shape[:2]
    sigma_out, sigma_in = shifted_permutation(n, p), shifted_permutation(m, p)
    blocked = torch.empty_like(dense_shifted)
    blocked[sigma_out[:, None], sigma_in[None, :]] = dense_shifted
    return blocked


def fallback_forward(x, weight, weight_pw, bias, spec: HetConvSpec) -> torch.Tensor:
    """Grouped k x k conv (groups=p) plus the full 1 x 1 conv with the expanded, zero-masked weight."""
    y = F.conv2d(x, weight, bias, spec.stride, spec.padding, groups=spec.p)
    return y + F.conv2d(x, expand_pointwise(weight_pw, spec.in_channels, spec.p), None, spec.stride)


def fallback_backward(dy, x, weight, weight_pw, spec: HetConvSpec, need_input: bool, need_weights: bool):
    """The published backward: both convolutions' cuDNN backward, the 1 x 1 gradient masked."""
    conv_bwd = torch.ops.aten.convolution_backward
    mask = (need_input, need_weights, need_weights and spec.bias)
    pw_full = expand_pointwise(weight_pw, spec.in_channels, spec.p)
    dx_g, dw, db = conv_bwd(dy, x, weight, [spec.out_channels] if spec.bias else None, [spec.stride] * 2,
                            [spec.padding] * 2, [1, 1], False, [0, 0], spec.p, list(mask))
    dx_pw, dpw_full, _ = conv_bwd(dy, x, pw_full, None, [spec.stride] * 2, [0, 0], [1, 1], False, [0, 0], 1,
                                  [need_input, need_weights, False])
    dx = dx_g + dx_pw if need_input else None
    dpw = None
    if need_weights:
        outside = outside_group_mask(spec.in_channels, spec.out_channels, spec.p, dy.device)
        dpw = dpw_full[:, :, 0, 0][outside].reshape(spec.weight_pw_shape)
    return dx, dw, dpw, db


def reference_forward(x, weight, weight_pw, bias, stride: int, p: int) -> torch.Tensor:
    """The SPEC's definition, a single dense conv: the float64 oracle for the tests."""
    k = weight.shape[-1]
    return F.conv2d(x, to_dense(weight, weight_pw, p), bias, stride, (k - 1) // 2)
