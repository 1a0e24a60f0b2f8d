"""Host side of the VersatileConv2d kernels: allocation, grids, tile configs and their candidates."""

from __future__ import annotations

import math

import torch

from tritonconv._layout import empty, empty_like_layout
from tritonconv.ops.versatile import kernels
from tritonconv.ops.versatile.spec import VersatileSpec
from tritonconv.tiles import (
    GemmTile,
    KernelTiles,
    TileTable,
    accumulator_dtype,
    cdiv,
    dot_precision,
    reduction_splits,
    sum_splits,
)

_BIAS_BLOCK = (64, 32)  # (channels, pixels) per program of the grad-bias reduction (more pixels spill unaligned)


def _gemm_extent(spec: VersatileSpec, kernel: str) -> tuple[int, int, int]:
    """(rows, cols, reduce) of the kernel's GEMM, to fit tiles to the shape."""
    columns = spec.n_c * spec.n_w
    if kernel == "forward":  # a program's columns share one channel window: n_w of them, c_hat channels
        return spec.batch * spec.out_height * spec.out_width, spec.n_w, spec.c_hat
    if kernel == "backward_input":
        return spec.batch * spec.height * spec.width, spec.in_channels, columns
    return spec.n_w, spec.c_hat, spec.batch * spec.out_height * spec.out_width


# Hopper's wgmma needs 64 rows per warp group; fewer rows lower to mma.sync (HMMA).
WGMMA_ROWS = 64
TILES = TileTable({
    # rows = output pixels, cols = (offset, primary filter) columns, reduce = input channels per tap
    "forward": KernelTiles(GemmTile(64, 64, 32, 4, 3), (
        GemmTile(64, 64, 32, 4, 3), GemmTile(128, 64, 32, 8, 3), GemmTile(64, 32, 32, 4, 3),
        GemmTile(128, 32, 32, 4, 3), GemmTile(64, 64, 64, 4, 2), GemmTile(32, 64, 32, 4, 3),
        GemmTile(128, 64, 16, 8, 4), GemmTile(64, 128, 32, 8, 3),
    ), ("BLOCK_M", "BLOCK_N", "BLOCK_K")),
    # rows = input pixels, cols = input channels, reduce = columns per tap
    # (128x64x64 needs 360 KB of shared memory with 4 stages and 245 KB with 3 in fp32 on sm_90: 2 here)
    # (128x64 at 4 warps spills where n_w is not a multiple of 8: the upstream tile is read 2 bytes at a time)
    "backward_input": KernelTiles(GemmTile(128, 64, 64, 8, 3), (
        GemmTile(128, 64, 64, 8, 3), GemmTile(128, 64, 32, 4, 3), GemmTile(128, 128, 32, 8, 3),
        GemmTile(64, 64, 64, 4, 3),
        GemmTile(128, 64, 64, 4, 2), GemmTile(64, 128, 32, 4, 4), GemmTile(256, 64, 32, 8, 3),
        GemmTile(64, 32, 64, 4, 4), GemmTile(32, 64, 64, 4, 4),
    ), ("BLOCK_M", "BLOCK_N", "BLOCK_K")),
    # rows = primary filters (masked filter rows beat mma.sync), cols = weight channels of one tap,
    # reduce = output pixels (4 warps spill where n_w is not a multiple of 8: the upstream tile is read 2
    # bytes at a time)
    "backward_weight": KernelTiles(GemmTile(64, 64, 64, 8, 3), (
        GemmTile(64, 64, 64, 8, 3), GemmTile(64, 64, 64, 4, 3), GemmTile(128, 64, 64, 8, 3),
        GemmTile(64, 128, 64, 8, 3),
        GemmTile(32, 64, 128, 4, 3), GemmTile(64, 32, 128, 4, 4), GemmTile(32, 32, 128, 4, 4),
    ), ("BLOCK_N", "BLOCK_C", "BLOCK_P"), min_rows=WGMMA_ROWS),
}, extent=_gemm_extent)
default_tile, candidate_tiles = TILES.default_tile, TILES.candidate_tiles


def _common(spec: VersatileSpec, dtype: torch.dtype) -> dict:
    return dict(K=spec.kernel_size, STRIDE=spec.stride, PAD=spec.padding, DIL=spec.dilation,
                DOT_PRECISION=dot_precision(dtype), ACC_DTYPE=accumulator_dtype(dtype))


def tap_major(weight: torch.Tensor) -> torch.Tensor:
    """[n_w, c_hat, K, K] -> [K*K, n_w, c_hat] contiguous: one tap's [filters, channels] block is
    contiguous (the kernels' weight operand). One copy of the weight per call, from its current
    values: nothing is cached."""
    n_w, c_hat, k, _ = weight.shape
    return weight.permute(2, 3, 0, 1).reshape(k * k, n_w, c_hat).contiguous()


def window_align(spec: VersatileSpec) -> int:
    """A power of two (at most 16) dividing every channel window's start j*g."""
    return 16 if spec.n_c == 1 else math.gcd(spec.g, 16)


def forward(x, weight, bias, spec: VersatileSpec, tile: GemmTile) -> torch.Tensor:
    y = empty_like_layout(spec.output_shape, x)
    if y.numel() == 0:
        return y
    weight = tap_major(weight)
    grid = (cdiv(spec.batch * spec.out_height * spec.out_width, tile.block_rows),
            spec.n_c * cdiv(spec.n_w, tile.block_cols))
    kernels.versatile_fwd_kernel[grid](
        x, weight, bias.contiguous() if bias is not None else None, y,
        spec.batch, spec.in_channels, spec.height, spec.width, spec.out_height, spec.out_width,
        *x.stride(), *y.stride(), spec.c_hat, spec.n_w, spec.n_c * spec.n_w, spec.g,
        S_NUM=spec.s_num, WINDOW_ALIGN=window_align(spec), HAS_BIAS=bias is not None, **_common(spec, x.dtype),
        **TILES["forward"].launch_args(tile))
    return y


def backward_input(dy, weight, spec: VersatileSpec, tile: GemmTile, like: torch.Tensor) -> torch.Tensor:
    dx = empty_like_layout(spec.input_shape, like)
    if dx.numel() == 0:
        return dx
    grid = (cdiv(spec.batch * spec.height * spec.width, tile.block_rows),
            cdiv(spec.in_channels, tile.block_cols))
    kernels.versatile_bwd_input_kernel[grid](
        dy, tap_major(weight), dx,
        spec.batch, spec.in_channels, spec.height, spec.width, spec.out_height, spec.out_width,
        *dy.stride(), *dx.stride(), spec.c_hat, spec.n_w, spec.n_c * spec.n_w, spec.g, spec.n_c,
        WINDOW_ALIGN=window_align(spec), **_common(spec, dy.dtype),
        **TILES["backward_input"].launch_args(tile))
    return dx


def backward_weight(dy, x, spec: VersatileSpec, tile: GemmTile):
    """(grad weight, grad bias or None), reduced over the pixels in fp32 (fp64), split partials summed
    in a fixed order."""
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    pixels = spec.batch * spec.out_height * spec.out_width
    if pixels == 0:
        db = torch.zeros(spec.out_channels, device=x.device, dtype=x.dtype) if spec.bias else None
        return torch.zeros(spec.weight_shape, device=x.device, dtype=x.dtype), db
    filter_tiles = cdiv(spec.n_w, tile.block_rows)
    column_tiles = spec.kernel_size**2 * cdiv(spec.c_hat, tile.block_cols)
    splits = reduction_splits(tile, filter_tiles * column_tiles, pixels, x.device)
    pixels_per_split = cdiv(cdiv(pixels, splits), tile.block_reduce) * tile.block_reduce
    weight_columns = spec.n_w * spec.c_hat * spec.kernel_size**2
    row = weight_columns + spec.out_channels * spec.bias  # dw flattened, then the bias
    partial = empty((splits, row), device=x.device, dtype=acc_dtype)
    kernels.versatile_bwd_weight_kernel[(filter_tiles, column_tiles, splits)](
        x, dy, partial, spec.batch, spec.in_channels, spec.height, spec.width, spec.out_height, spec.out_width,
        *x.stride(), *dy.stride(), spec.c_hat, spec.n_w, spec.n_c * spec.n_w, spec.g, spec.n_c, pixels_per_split,
        row, WINDOW_ALIGN=window_align(spec), **_common(spec, x.dtype),
        **TILES["backward_weight"].launch_args(tile))
    if spec.bias:  # the same pixel splits, into the bias's columns of the same rows
        block_o, block_p = _BIAS_BLOCK
        kernels.channel_sum_kernel[(cdiv(spec.out_channels, block_o), splits)](
            dy, partial[:, weight_columns:], spec.batch, spec.out_channels, spec.out_height, spec.out_width,
            *dy.stride(), pixels_per_split, row, ACC_DTYPE=accumulator_dtype(x.dtype), BLOCK_O=block_o,
            BLOCK_P=block_p)
    return sum_splits(partial, spec.weight_shape, (spec.out_channels,) if spec.bias else None, x.dtype)
