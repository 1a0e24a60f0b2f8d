"""Host side of the fused depthwise-separable kernels: allocation, grids, tiles and their candidates.

Tile roles per kernel (rows x cols, reducing ``block_reduce`` at a time):

| kernel | rows | cols | reduce |
|---|---|---|---|
| forward | output pixels | filters N | channels C |
| backward_mid | output pixels | channels C | filters N |
| backward_pw_weight | filters N | channels C | output pixels (split) |
| backward_input, backward_weight | the depthwise kernels' tiles (see ``depthwise.launch``) | | |
"""

from __future__ import annotations

import torch
import triton

from tritonconv._layout import empty, empty_like_layout
from tritonconv.ops.depthwise import launch as depthwise_launch
from tritonconv.ops.depthwise.spec import ACTIVATIONS
from tritonconv.ops.dwsep import kernels
from tritonconv.ops.dwsep.spec import DwSepSpec
from tritonconv.tiles import GemmTile, accumulator_dtype, dot_precision, reduction_splits

KERNEL_NAMES = ("forward", "backward_mid", "backward_pw_weight", "backward_input", "backward_weight")

_CANDIDATES = {
    "forward": [
        GemmTile(64, 128, 32, 4, 2), GemmTile(128, 64, 32, 4, 2), GemmTile(64, 64, 32, 4, 2),
        GemmTile(128, 128, 32, 8, 2), GemmTile(64, 256, 32, 8, 2), GemmTile(32, 128, 32, 4, 2),
        GemmTile(64, 128, 16, 4, 2), GemmTile(128, 64, 64, 8, 2),
    ],
    "backward_mid": [
        GemmTile(64, 64, 64, 4, 2), GemmTile(128, 32, 64, 4, 2), GemmTile(64, 32, 64, 4, 3),
        GemmTile(128, 64, 32, 8, 2), GemmTile(64, 128, 32, 8, 2), GemmTile(32, 64, 64, 4, 2),
    ],
    "backward_pw_weight": [
        GemmTile(64, 64, 64, 4, 2), GemmTile(128, 64, 32, 8, 2), GemmTile(64, 128, 32, 8, 2),
        GemmTile(128, 128, 32, 8, 2), GemmTile(64, 64, 128, 4, 2), GemmTile(32, 64, 64, 4, 2),
    ],
}
_DEFAULTS = {"forward": GemmTile(64, 128, 32, 4, 2), "backward_mid": GemmTile(64, 64, 64, 4, 2),
             "backward_pw_weight": GemmTile(64, 64, 64, 4, 2)}


def _extent(spec: DwSepSpec, kernel: str) -> tuple[int, int, int]:
    pixels = spec.batch * spec.out_height * spec.out_width
    return {"forward": (pixels, spec.out_channels, spec.in_channels),
            "backward_mid": (pixels, spec.in_channels, spec.out_channels),
            "backward_pw_weight": (spec.out_channels, spec.in_channels, pixels)}[kernel]


def default_tile(spec: DwSepSpec, kernel: str) -> GemmTile:
    if kernel in ("backward_input", "backward_weight"):
        return depthwise_launch.default_tile(spec.depthwise(), kernel)
    return _DEFAULTS[kernel].fitted(*_extent(spec, kernel))


def candidate_tiles(spec: DwSepSpec, kernel: str) -> list[GemmTile]:
    if kernel in ("backward_input", "backward_weight"):
        return depthwise_launch.candidate_tiles(spec.depthwise(), kernel)
    return list(dict.fromkeys(tile.fitted(*_extent(spec, kernel)) for tile in _CANDIDATES[kernel]))


def _common(spec: DwSepSpec, dtype: torch.dtype) -> dict:
    return dict(K=spec.kernel_size, STRIDE=spec.stride, PAD=spec.padding, DIL=spec.dilation,
                ACT=ACTIVATIONS[spec.activation], OUT_ACT=ACTIVATIONS[spec.out_activation],
                HAS_DW_BIAS=spec.dw_bias, DOT_PRECISION=dot_precision(dtype), ACC_DTYPE=accumulator_dtype(dtype))


def _sizes(spec: DwSepSpec) -> tuple:
    return (spec.batch, spec.in_channels, spec.height, spec.width, spec.out_channels, spec.out_height,
            spec.out_width)


def forward(x, dw_weight, dw_bias, pw_weight, pw_bias, spec: DwSepSpec, tile: GemmTile) -> torch.Tensor:
    y = empty_like_layout(spec.output_shape, x)
    if y.numel() == 0:
        return y
    dw_weight = dw_weight.contiguous()
    grid = (triton.cdiv(spec.batch * spec.out_height * spec.out_width, tile.block_rows),
            triton.cdiv(spec.out_channels, tile.block_cols))
    kernels.dwsep_fwd_kernel[grid](
        x, dw_weight, dw_bias.contiguous() if dw_bias is not None else dw_weight, pw_weight.contiguous(),
        pw_bias.contiguous() if pw_bias is not None else dw_weight, y, *_sizes(spec), *x.stride(), *y.stride(),
        **_common(spec, x.dtype), HAS_PW_BIAS=pw_bias is not None,
        BLOCK_P=tile.block_rows, BLOCK_N=tile.block_cols, BLOCK_C=tile.block_reduce,
        num_warps=tile.num_warps, num_stages=tile.num_stages,
    )
    return y


def backward_mid(dy, y, x, dw_weight, dw_bias, pw_weight, spec: DwSepSpec, tile: GemmTile) -> torch.Tensor:
    """dz: the gradient of the depthwise pre-activation [B, C, Ho, Wo], in fp32 (fp64) so the depthwise
    backward reads it unrounded."""
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    dz = empty_like_layout((spec.batch, spec.in_channels, spec.out_height, spec.out_width), x,
                                            acc_dtype)
    if dz.numel() == 0:
        return dz
    dw_weight = dw_weight.contiguous()
    y = y if ACTIVATIONS[spec.out_activation] else dy
    grid = (triton.cdiv(spec.batch * spec.out_height * spec.out_width, tile.block_rows),
            triton.cdiv(spec.in_channels, tile.block_cols))
    kernels.dwsep_bwd_mid_kernel[grid](
        x, dw_weight, dw_bias.contiguous() if dw_bias is not None else dw_weight, pw_weight.contiguous(), dy, y, dz,
        *_sizes(spec), *x.stride(), *dy.stride(), *y.stride(), *dz.stride(), **_common(spec, x.dtype),
        BLOCK_P=tile.block_rows, BLOCK_C=tile.block_cols, BLOCK_N=tile.block_reduce,
        num_warps=tile.num_warps, num_stages=tile.num_stages,
    )
    return dz


def backward_pw_weight(dy, y, x, dw_weight, dw_bias, spec: DwSepSpec, tile: GemmTile):
    """(grad pw_weight [N, C, 1, 1], grad pw_bias [N] or None), reduced in fp32 (fp64)."""
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    pixels = spec.batch * spec.out_height * spec.out_width
    if pixels == 0:
        return (torch.zeros(spec.pw_weight_shape, device=x.device, dtype=x.dtype),
                torch.zeros(spec.out_channels, device=x.device, dtype=x.dtype) if spec.pw_bias else None)
    filter_tiles = triton.cdiv(spec.out_channels, tile.block_rows)
    channel_tiles = triton.cdiv(spec.in_channels, tile.block_cols)
    splits = reduction_splits(tile, filter_tiles * channel_tiles, pixels, x.device)
    pixels_per_split = triton.cdiv(triton.cdiv(pixels, splits), tile.block_reduce) * tile.block_reduce
    partial = empty((splits, spec.out_channels, spec.in_channels), device=x.device, dtype=acc_dtype)
    partial_bias = empty((splits, spec.out_channels), device=x.device, dtype=acc_dtype) if spec.pw_bias else None
    dw_weight = dw_weight.contiguous()
    y = y if ACTIVATIONS[spec.out_activation] else dy
    kernels.dwsep_bwd_pw_weight_kernel[(filter_tiles, channel_tiles, splits)](
        x, dw_weight, dw_bias.contiguous() if dw_bias is not None else dw_weight, dy, y, partial,
        partial_bias if partial_bias is not None else partial, *_sizes(spec), pixels_per_split,
        *x.stride(), *dy.stride(), *y.stride(), **_common(spec, x.dtype), HAS_PW_BIAS=spec.pw_bias,
        BLOCK_N=tile.block_rows, BLOCK_C=tile.block_cols, BLOCK_P=tile.block_reduce,
        num_warps=tile.num_warps, num_stages=tile.num_stages,
    )
    grad_pw = partial.sum(0).to(x.dtype).reshape(spec.pw_weight_shape)
    return grad_pw, partial_bias.sum(0).to(x.dtype) if partial_bias is not None else None


def backward(dy, y, x, dw_weight, dw_bias, pw_weight, spec: DwSepSpec, tiles: dict, need_input: bool,
             need_weights: bool):
    """(dx, grad dw_weight, grad dw_bias, grad pw_weight, grad pw_bias); unneeded ones are None."""
    dz = backward_mid(dy, y, x, dw_weight, dw_bias, pw_weight, spec, tiles["backward_mid"])
    depthwise = spec.depthwise()
    dx = (depthwise_launch.backward_input(dz, dz, dw_weight, depthwise, tiles["backward_input"], x)
          if need_input else None)
    if not need_weights:
        return dx, None, None, None, None
    ddw, ddb = depthwise_launch.backward_weight(dz, dz, x, depthwise, tiles["backward_weight"])
    dpw, dpb = backward_pw_weight(dy, y, x, dw_weight, dw_bias, spec, tiles["backward_pw_weight"])
    return dx, ddw, ddb, dpw, dpb
