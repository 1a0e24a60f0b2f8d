"""Host side of the VersatileConv2d kernels: allocation, grids, tile configs and their candidates.

The kernels read the weight [n_w, c_hat, K, K] taps-major, [K*K, n_w, c_hat] in memory
(``_weights.is_taps_major``; the layer allocates it so and keeps it so): a weight in any other layout is
copied to taps-major per call (one launch), never cached. The weight gradient is written with
``_weights.grad_strides(weight)`` (the weight's own strides, taps-major or contiguous), so autograd
accumulates it and DDP buckets it without a copy."""

from __future__ import annotations

import functools
import math
from dataclasses import replace

import torch

from tritonconv import tiles
from tritonconv._launcher import launch
from tritonconv._layout import empty, empty_like_layout, int32_addressable
from tritonconv._weights import empty_grad, grad_is_taps_major, taps_major
from tritonconv.ops.versatile import kernels
from tritonconv.ops.versatile.spec import VersatileSpec
from tritonconv.tiles import (
    GemmTile,
    KernelTiles,
    TileTable,
    cdiv,
    next_power_of_2,
    precision,
    reduction_splits,
    sum_splits,
)


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
    # (128 rows on one warp group and 64 channels: 8 wgmma per pipelined step, which pays for the step's
    # fixed cost; 64 rows or 32 channels spend 30-50 instructions per wgmma)
    "forward": KernelTiles(GemmTile(128, 64, 64, 4, 3), (
        GemmTile(128, 64, 64, 4, 3), GemmTile(128, 32, 64, 4, 3), GemmTile(128, 64, 64, 8, 3),
        GemmTile(64, 64, 128, 4, 3), GemmTile(64, 64, 64, 4, 3), GemmTile(128, 64, 32, 8, 3),
        GemmTile(128, 128, 64, 8, 3), GemmTile(64, 32, 64, 4, 4),
    ), ("BLOCK_M", "BLOCK_N", "BLOCK_K"), wide_default=GemmTile(128, 64, 64, 8, 3)),  # fp32: 2-5 spills on 4 warps
    # rows = input pixels, cols = input channels, reduce = columns per tap
    # (256 rows on one warp group: 8 wgmma per pipelined step at 32 filters a step, which is what
    # n_w = 32 allows; fp32 needs 120 KB of shared memory with 3 stages)
    "backward_input": KernelTiles(GemmTile(256, 64, 32, 4, 3), (
        GemmTile(256, 64, 32, 4, 3), GemmTile(128, 64, 64, 4, 3), GemmTile(256, 64, 64, 4, 2),
        GemmTile(128, 64, 64, 8, 3), GemmTile(128, 128, 32, 8, 3), GemmTile(64, 64, 64, 4, 3),
        GemmTile(256, 64, 32, 8, 3), GemmTile(64, 32, 64, 4, 4),
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
candidate_tiles = TILES.candidate_tiles
PLANS_KEPT = 1024  # launch plans memoized per launcher (one per shape, tile and layout)


def default_tile(spec: VersatileSpec, kernel: str) -> GemmTile:
    tile = TILES.default_tile(spec, kernel)
    if kernel == "backward_input" and window_select(spec, tile.block_cols) and tile.block_rows > 128:
        # a second accumulator per window (window_select): 256 rows at 4 warps would spill
        tile = replace(tile, block_rows=128, num_warps=8)
    return tile


def _common(spec: VersatileSpec) -> dict:
    return dict(K=spec.kernel_size, STRIDE=spec.stride, PAD=spec.padding, DIL=spec.dilation)


def window_align(spec: VersatileSpec) -> int:
    """A power of two (at most 16) dividing every channel window's start j*g."""
    return 16 if spec.n_c == 1 else math.gcd(spec.g, 16)


def tap_uses(kernel_size: int) -> int:
    """Sum over the taps of the secondaries that use each, sum over s of (k - 2s)^2 (10, 35, 84 for k = 3,
    5, 7): the backward-input kernel's steps per filter chunk."""
    return sum((kernel_size - 2 * s) ** 2 for s in range((kernel_size + 1) // 2))


def flat_pixels(shape, strides) -> bool:
    """Whether pixel p (flat over batch, rows, columns) of a 4-D tensor of ``shape`` and ``strides`` lies
    at p * strides[3]."""
    _, _, h, w = shape
    sb, _, sh, sw = strides
    return sh == w * sw and sb == h * sh


def bias_rows(tile: GemmTile) -> int:
    """Rows of the forward's bias tile: enough that it has an element for each of the program's threads."""
    return max(1, next_power_of_2(32 * tile.num_warps // tile.block_cols))


# ---- launchers --------------------------------------------------------------------------------------

# Each launcher's plan (grid, the kernel's integer arguments and constexprs) is a pure function of the
# spec, the tile and the strides: memoized, so a repeated call only allocates and launches. Switches
# that may change between calls (tf32, the interpreter: ``_precision``; the device's SM count, which
# keys the weight-gradient plan) are read per call.

@functools.lru_cache(maxsize=PLANS_KEPT)
def _forward_plan(spec: VersatileSpec, tile: GemmTile, x_strides, y_strides, has_bias: bool):
    """(grid, integer arguments, constexprs) of ``versatile_fwd_kernel``."""
    grid = (cdiv(spec.batch * spec.out_height * spec.out_width, tile.block_rows),
            spec.n_c * cdiv(spec.n_w, tile.block_cols))
    integers = (spec.batch, spec.in_channels, spec.height, spec.width, spec.out_height, spec.out_width,
                *x_strides, *y_strides, spec.c_hat, spec.n_w, spec.n_c * spec.n_w, spec.g)
    constexprs = dict(S_NUM=spec.s_num, WINDOW_ALIGN=window_align(spec), EVEN_K=spec.c_hat % tile.block_reduce == 0,
                      HAS_BIAS=has_bias, FLAT_Y=flat_pixels(spec.output_shape, y_strides),
                      ALIGNED_Y=spec.n_w % 8 == 0, BIAS_ROWS=bias_rows(tile), **_common(spec),
                      **TILES["forward"].launch_args(tile))
    return grid, integers, constexprs


def forward(x, weight, bias, spec: VersatileSpec, tile: GemmTile) -> torch.Tensor:
    y = empty_like_layout(spec.output_shape, x)  # in x's own layout, before x may be compacted
    x = int32_addressable(x)
    if y.numel() == 0:
        return y
    grid, integers, constexprs = _forward_plan(spec, tile, x.stride(), y.stride(), bias is not None)
    bias = bias.contiguous() if bias is not None else None
    launch(kernels.versatile_fwd_kernel, grid, (x, taps_major(weight), bias, y), integers,
           {**constexprs, **precision(x.dtype)})
    return y


def window_select(spec: VersatileSpec, block_cols: int) -> bool:
    """Whether a grad-input channel tile of ``block_cols`` can straddle a window's edge: several windows
    whose step g or width c_hat the tile does not divide. The kernel then keeps each window's sum apart
    (a second accumulator) so a non-finite gradient stays inside its window."""
    return spec.n_c > 1 and bool(spec.g % block_cols or spec.c_hat % block_cols)


@functools.lru_cache(maxsize=PLANS_KEPT)
def _backward_input_plan(spec: VersatileSpec, tile: GemmTile, dy_strides, dx_strides):
    """(grid, integer arguments, constexprs) of ``versatile_bwd_input_kernel``."""
    grid = (cdiv(spec.batch * spec.height * spec.width, tile.block_rows),
            cdiv(spec.in_channels, tile.block_cols))
    integers = (spec.batch, spec.in_channels, spec.height, spec.width, spec.out_height, spec.out_width,
                *dy_strides, *dx_strides, spec.c_hat, spec.n_w, spec.n_c * spec.n_w, spec.g, spec.n_c)
    constexprs = dict(WINDOW_ALIGN=window_align(spec), TAP_USES=tap_uses(spec.kernel_size),
                      EVEN_F=spec.n_w % tile.block_reduce == 0, ALIGNED_DY=spec.n_w % 8 == 0,
                      WINDOW_SELECT=window_select(spec, tile.block_cols), **_common(spec),
                      **TILES["backward_input"].launch_args(tile))
    return grid, integers, constexprs


def backward_input(dy, weight, spec: VersatileSpec, tile: GemmTile, like: torch.Tensor) -> torch.Tensor:
    dy = int32_addressable(dy)
    dx = empty_like_layout(spec.input_shape, like)
    if dx.numel() == 0:
        return dx
    grid, integers, constexprs = _backward_input_plan(spec, tile, dy.stride(), dx.stride())
    launch(kernels.versatile_bwd_input_kernel, grid, (dy, taps_major(weight), dx), integers,
           {**constexprs, **precision(dy.dtype)})
    return dx


@functools.lru_cache(maxsize=PLANS_KEPT)
def _backward_weight_plan(spec: VersatileSpec, tile: GemmTile, x_strides, dy_strides, taps_major_grad: bool,
                          device: torch.device, multiprocessors: int):
    """(partial's shape, grid, integer arguments, constexprs) of ``versatile_bwd_weight_kernel``;
    ``taps_major_grad``: whether dw is laid out taps-major (else contiguous). ``multiprocessors``, the
    device's SM count the splits follow, only keys the memo."""
    pixels = spec.batch * spec.out_height * spec.out_width
    filter_tiles = cdiv(spec.n_w, tile.block_rows)
    column_tiles = spec.kernel_size**2 * cdiv(spec.c_hat, tile.block_cols)
    splits = reduction_splits(tile, filter_tiles * column_tiles, pixels, device)
    pixels_per_split = cdiv(cdiv(pixels, splits), tile.block_reduce) * tile.block_reduce
    taps = spec.kernel_size**2
    weight_columns = spec.n_w * spec.c_hat * taps
    row = weight_columns + spec.out_channels * spec.bias  # dw in its memory order, then the bias
    # (f, c, tap) strides of dw's memory order: taps-major [K*K, n_w, c_hat] or contiguous [n_w, c_hat, K*K]
    strides = (spec.c_hat, 1, spec.n_w * spec.c_hat) if taps_major_grad else (spec.c_hat * taps, taps, 1)
    # Column 0 of a filter tile sums dy for an even share of the O output channels (whole BLOCK_N blocks).
    bias_channels = cdiv(cdiv(spec.out_channels, filter_tiles), tile.block_rows) * tile.block_rows
    integers = (spec.batch, spec.in_channels, spec.height, spec.width, spec.out_height, spec.out_width,
                *x_strides, *dy_strides, spec.c_hat, spec.n_w, spec.n_c * spec.n_w, spec.g, spec.n_c,
                pixels_per_split, row, *strides, spec.out_channels, bias_channels)
    constexprs = dict(WINDOW_ALIGN=window_align(spec), HAS_BIAS=spec.bias, **_common(spec),
                      **TILES["backward_weight"].launch_args(tile))
    return (splits, row), (filter_tiles, column_tiles + spec.bias, splits), integers, constexprs


def backward_weight(dy, x, spec: VersatileSpec, tile: GemmTile, weight: torch.Tensor | None = None):
    """(grad weight, grad bias or None), reduced over the pixels in fp32 (fp64), split partials summed
    in a fixed order: two launches (the partials, the bias's among them; their sum). Grad weight has
    ``_weights.grad_strides(weight)`` (taps-major without ``weight``)."""
    dy, x = int32_addressable(dy), int32_addressable(x)
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    dw = empty_grad(weight, spec.weight_shape, device=x.device, dtype=x.dtype)
    if spec.batch * spec.out_height * spec.out_width == 0:
        db = torch.zeros(spec.out_channels, device=x.device, dtype=x.dtype) if spec.bias else None
        return dw.zero_(), db
    shape, grid, integers, constexprs = _backward_weight_plan(
        spec, tile, x.stride(), dy.stride(), grad_is_taps_major(weight, spec.weight_shape), x.device,
        tiles.multiprocessor_count(x.device))
    partial = empty(shape, device=x.device, dtype=acc_dtype)
    launch(kernels.versatile_bwd_weight_kernel, grid, (x, dy, partial), integers, {**constexprs, **precision(x.dtype)})
    return sum_splits(partial, spec.weight_shape, (spec.out_channels,) if spec.bias else None, x.dtype,
                      weight=dw)
