"""Host side of the ShiftConv2d kernels: allocation, grids (each launch's plan memoized), tile configs and
their candidates."""

from __future__ import annotations

import functools
import math
from dataclasses import replace

import torch

from tritonconv import tiles
from tritonconv._launcher import launch
from tritonconv._layout import empty, empty_like_layout, int32_addressable, pixel_stride_align
from tritonconv.ops.shift import kernels
from tritonconv.ops.shift.spec import ShiftSpec
from tritonconv.tiles import (
    MIN_DOT_TILE,
    GemmTile,
    KernelTiles,
    TileTable,
    cdiv,
    next_power_of_2,
    precision,
    reduction_splits,
    sum_splits,
)


def segmented(spec: ShiftSpec) -> bool:
    """Whether the forward reduces direction by direction: each direction owns at least one dot's
    worth of channels (fewer would pad every direction's chunk with masked channels)."""
    return spec.shift_group >= MIN_DOT_TILE


def _gemm_extent(spec: ShiftSpec, kernel: str) -> tuple[int, int, int]:
    """(rows, cols, reduce) of the kernel's GEMM, to fit tiles to the shape."""
    if kernel == "forward":  # segmented: a chunk holds the channels of one direction
        reduce = spec.shift_group if segmented(spec) else spec.in_channels
        return spec.batch * spec.out_height * spec.out_width, spec.out_channels, reduce
    if kernel == "backward_input":
        return spec.batch * spec.height * spec.width, spec.in_channels, spec.out_channels
    cols = spec.shift_group if segmented(spec) else spec.in_channels  # segmented: one direction per tile
    return spec.out_channels, cols, spec.batch * spec.out_height * spec.out_width


# Hopper's wgmma needs 64 rows per warp group; fewer rows lower to mma.sync (HMMA).
WGMMA_ROWS = 64
_FORWARD = (
    GemmTile(128, 64, 32, 4, 3), GemmTile(128, 128, 32, 8, 3), GemmTile(64, 64, 64, 4, 3),
    GemmTile(128, 64, 64, 4, 4), GemmTile(64, 128, 32, 4, 4), GemmTile(128, 128, 64, 8, 3),
    GemmTile(256, 64, 32, 8, 3), GemmTile(64, 32, 64, 4, 4), GemmTile(256, 128, 32, 8, 3),
    GemmTile(32, 64, 64, 4, 4),
)
# fp32 (sm_90a audit): 8 warps and 2 stages, where the forward's pipelined tiles fit shared memory and
# nothing spills (at most 225 registers and 48 KB on both shape sets; the k^2 shifted loads of the
# earlier, looped unsegmented forward took 320 KB at 3 stages). The weight gradient spills up to 1240
# registers at 64x64x64 (4 warps), none at 64x64x32 on 8 warps.
_FORWARD_WIDE = GemmTile(128, 64, 32, 8, 2)
_WEIGHT_GRAD_WIDE = GemmTile(64, 64, 32, 8, 3)
TILES = TileTable({
    # rows = pixels, cols = filters, reduce = channels
    "forward": KernelTiles(GemmTile(128, 64, 32, 4, 3), (*_FORWARD, _FORWARD_WIDE), ("BLOCK_M", "BLOCK_N", "BLOCK_K"),
                           wide_default=_FORWARD_WIDE),
    # rows = pixels, cols = channels, reduce = filters; 128x64 tiles at 4 warps spill in the epilogue (the
    # shifted store's per-element targets)
    "backward_input": KernelTiles(GemmTile(128, 64, 64, 8, 3), (GemmTile(128, 64, 64, 8, 3), *_FORWARD),
                                  ("BLOCK_M", "BLOCK_N", "BLOCK_K")),
    # rows = filters (masked filter rows beat mma.sync), cols = channels, reduce = output pixels
    "backward_weight": KernelTiles(GemmTile(64, 64, 64, 4, 3), (
        GemmTile(64, 64, 64, 4, 3), GemmTile(128, 64, 64, 8, 3), GemmTile(64, 128, 64, 8, 3),
        GemmTile(32, 64, 128, 4, 3), GemmTile(64, 32, 128, 4, 4), GemmTile(128, 128, 32, 8, 3),
        GemmTile(64, 64, 128, 4, 4), GemmTile(32, 32, 128, 4, 4), _WEIGHT_GRAD_WIDE,
    ), ("BLOCK_N", "BLOCK_C", "BLOCK_P"), min_rows=WGMMA_ROWS, wide_default=_WEIGHT_GRAD_WIDE),
}, extent=_gemm_extent)
# grad-input channel tiles this narrow run at 4 warps (see default_tile)
_NARROW_COLUMNS = 32
PLANS_KEPT = 1024  # launch plans memoized per launcher (one per shape, tile and layout)


# The unrolled forward's reduction block: all channels in one chunk up to this many (the weight chunk
# then stays in registers across the program's pixel tiles; 128 channels hold 32 registers at 64 filters;
# fp32 128->128 holds 255 registers at 128, so 4- and 8-byte operands take half). Past it, chunks of
# UNROLLED_SEVERAL: the whole reduction is unrolled, and with 64- or 128-channel chunks 5x5 and 7x7
# shifts of 384-392 channels spill 50-240 registers (with 32: none at 5x5, 51 at 7x7; sm_90a, bf16).
UNROLLED_REDUCE = 128
UNROLLED_SEVERAL = 32
# 5x5 and 7x7 shifts in one chunk keep up to 25-49 loads per vector in flight: two warp groups halve
# each thread's share (5x5 on 100 channels: 29 spilled registers at 4 warps and 128 channels, none at 8
# warps and 64)
UNROLLED_WIDE_SHIFT = dict(num_warps=8, block_reduce=64)


def default_tile(spec: ShiftSpec, kernel: str) -> GemmTile:
    tile = TILES.default_tile(spec, kernel)
    if kernel == "forward" and not segmented(spec):
        # one chunk where it fits; one stage: software pipelining stages the per-shift loads through
        # shared memory (cp.async, then 2-byte reads back) where they go to registers directly
        most = UNROLLED_REDUCE // 2 if tiles.wide_dtype(spec.dtype) else UNROLLED_REDUCE
        reduce = min(max(next_power_of_2(spec.in_channels), MIN_DOT_TILE), most)
        warps = tile.num_warps
        if spec.in_channels > UNROLLED_REDUCE:
            reduce = UNROLLED_SEVERAL
        elif spec.kernel_size >= 5:
            reduce = min(reduce, UNROLLED_WIDE_SHIFT["block_reduce"])
            warps = max(warps, UNROLLED_WIDE_SHIFT["num_warps"])
        tile = replace(tile, block_reduce=reduce, num_warps=warps, num_stages=1)
    if kernel == "backward_weight" and not segmented(spec) and tile.block_rows * tile.block_cols > 64 * 32:
        # the per-direction passes hold two accumulators: 64 x 64 at 4 warps spills
        tile = replace(tile, num_warps=8)
    if kernel == "backward_input" and tile.block_cols <= _NARROW_COLUMNS and tile.num_warps == 8:
        # narrow channel tiles: one warp group takes all the rows (twice the wgmmas per step for the same
        # loop overhead; the epilogue's per-element targets fit at 4 warps this narrow), and 16 channels
        # (a reduction of one or two steps) take 256 rows
        rows = spec.batch * spec.height * spec.width
        tile = replace(tile, num_warps=4, block_rows=2 * tile.block_rows
                       if tile.block_cols == MIN_DOT_TILE and rows >= 2 * tile.block_rows else tile.block_rows)
    return tile


def candidate_tiles(spec: ShiftSpec, kernel: str) -> list[GemmTile]:
    """The table's candidates; the unrolled forward's on one stage (see ``default_tile``), with its
    default's chunk among them."""
    found = TILES.candidate_tiles(spec, kernel)
    if kernel == "forward" and not segmented(spec):
        found = list(dict.fromkeys([default_tile(spec, kernel), *(replace(t, num_stages=1) for t in found)]))
    return found


def _group_align(spec: ShiftSpec) -> int:
    """A power of two (at most 16) dividing the channels per direction: the kernels' alignment promise."""
    return math.gcd(max(spec.shift_group, 1), 16)


def _weight_column_tiles(spec: ShiftSpec, block_cols: int) -> int:
    """Column tiles of the grad-weight grid: per direction when segmented (then the remainder)."""
    if not segmented(spec):
        return cdiv(spec.in_channels, block_cols)
    remainder = spec.in_channels - spec.shifted_channels
    return spec.kernel_size**2 * cdiv(spec.shift_group, block_cols) + cdiv(remainder, block_cols)


def _flat_pixels(shape, strides) -> bool:
    """Whether pixel p = (b*H + h)*W + w of a tensor of ``shape`` and ``strides`` lies at p * (w stride),
    as in channels_last: the weight gradient then addresses pixels by bumping a base pointer."""
    batch, _, height, width = shape
    sb, _, sh, sw = strides
    return (batch == 1 or sb == height * width * sw) and (height == 1 or sh == width * sw)


def _shift_args(spec: ShiftSpec) -> tuple[int, int]:
    # SHIFT_GROUP is a divisor in the grouped assignment: 1 keeps it valid when no channel is shifted.
    return spec.shifted_channels, max(spec.shift_group, 1)


def _constexprs(spec: ShiftSpec) -> dict:
    return dict(K=spec.kernel_size, DIL=spec.dilation, STRIDE=spec.stride, GROUPED=spec.assignment == "grouped")


def _sizes(spec: ShiftSpec) -> tuple:
    return (spec.batch, spec.in_channels, spec.height, spec.width, spec.out_channels, spec.out_height,
            spec.out_width)


def reduction_ordered_weight(weight: torch.Tensor, spec: ShiftSpec) -> torch.Tensor:
    """The [N, C] weight with its input channels in the segmented forward's reduction order: direction d's
    channels at columns [d*G, (d+1)*G), then the unshifted remainder. The grouped assignment is already
    in that order; the interleaved one (direction d = channels d, d + k^2, ...) is one transposing copy
    of the weight per call (N*C elements, derived from the current values: nothing is cached)."""
    weight = weight.reshape(spec.out_channels, spec.in_channels)
    if spec.assignment == "grouped" or not segmented(spec):
        return weight.contiguous()
    n, shifted = spec.out_channels, spec.shifted_channels
    by_direction = weight[:, :shifted].reshape(n, spec.shift_group, spec.kernel_size**2).transpose(1, 2)
    if shifted == spec.in_channels:
        return by_direction.reshape(n, shifted)
    return torch.cat([by_direction.reshape(n, shifted), weight[:, shifted:]], dim=1)


# ---- launchers --------------------------------------------------------------------------------------

# Each launcher's plan (grid, the kernel's integer arguments and constexprs) is a pure function of the
# spec, the tile and the strides: memoized, so a repeated call only allocates and launches. Switches
# that may change between calls (tf32, the interpreter: ``_precision``; the device's SM count, which
# keys the weight-gradient plan) are read per call.

# Unrolled-forward programs per SM: each walks its share of the pixel tiles (its first weight chunk and
# its index math paid once per program), enough of them resident to hide the loads' latency.
UNROLLED_PROGRAMS_PER_SM = 4


@functools.lru_cache(maxsize=PLANS_KEPT)
def _forward_plan(spec: ShiftSpec, tile: GemmTile, x_strides, y_strides, has_bias: bool, multiprocessors: int):
    """(kernel, grid, integer arguments, constexprs) of the forward: ``shift_fwd_kernel`` where each
    direction owns a dot's worth of channels, else ``shift_fwd_unrolled_kernel`` (whose pixel programs
    follow ``multiprocessors``, the device's SM count)."""
    if not segmented(spec) and tile.block_reduce > UNROLLED_REDUCE:  # its chunk: a tree of 16 vectors at most
        tile = replace(tile, block_reduce=UNROLLED_REDUCE)
    pixel_tiles = cdiv(spec.batch * spec.out_height * spec.out_width, tile.block_rows)
    filter_tiles = cdiv(spec.out_channels, tile.block_cols)
    constexprs = dict(HAS_BIAS=has_bias, **_constexprs(spec), **TILES["forward"].launch_args(tile))
    if segmented(spec):
        integers = (*_sizes(spec), *x_strides, *y_strides, *_shift_args(spec))
        return (kernels.shift_fwd_kernel, (pixel_tiles, filter_tiles), integers,
                dict(GROUP_ALIGN=_group_align(spec), **constexprs))
    pixel_programs = min(pixel_tiles, cdiv(UNROLLED_PROGRAMS_PER_SM * multiprocessors, filter_tiles))
    integers = (spec.batch, spec.height, spec.width, spec.out_channels, spec.out_height, spec.out_width,
                *x_strides, *y_strides, pixel_tiles)
    return (kernels.shift_fwd_unrolled_kernel, (pixel_programs, filter_tiles), integers,
            dict(C=spec.in_channels, R=spec.shifted_channels, G=max(spec.shift_group, 1),
                 X_ALIGN=pixel_stride_align(x_strides), Y_ALIGN=pixel_stride_align(y_strides),
                 FILTER_ROWS=tile.block_cols >= WGMMA_ROWS, **constexprs))


def forward(x, weight, bias, spec: ShiftSpec, tile: GemmTile) -> torch.Tensor:
    y = empty_like_layout(spec.output_shape, x)  # in x's own layout, before x may be compacted
    x = int32_addressable(x)
    if y.numel() == 0:
        return y
    weight = reduction_ordered_weight(weight, spec)
    kernel, grid, integers, constexprs = _forward_plan(spec, tile, x.stride(), y.stride(), bias is not None,
                                                       tiles.multiprocessor_count(x.device))
    launch(kernel, grid, (x, weight, bias.contiguous() if bias is not None else None, y), integers,
           {**constexprs, **precision(x.dtype)})
    return y


@functools.lru_cache(maxsize=PLANS_KEPT)
def _backward_input_plan(spec: ShiftSpec, tile: GemmTile, dy_strides, dx_strides):
    """(grid, integer arguments, constexprs) of ``shift_bwd_input_kernel``."""
    grid = (cdiv(spec.batch * spec.height * spec.width, tile.block_rows),
            cdiv(spec.in_channels, tile.block_cols))
    integers = (*_sizes(spec), *dy_strides, *dx_strides, *_shift_args(spec))
    return grid, integers, dict(EVEN_K=spec.out_channels % tile.block_reduce == 0, **_constexprs(spec),
                                **TILES["backward_input"].launch_args(tile))


def backward_input(dy, weight, spec: ShiftSpec, tile: GemmTile, like: torch.Tensor) -> torch.Tensor:
    dy = int32_addressable(dy)
    dx = empty_like_layout(spec.input_shape, like)
    if dx.numel() == 0:
        return dx
    weight = weight.reshape(spec.out_channels, spec.in_channels).contiguous()
    grid, integers, constexprs = _backward_input_plan(spec, tile, dy.stride(), dx.stride())
    launch(kernels.shift_bwd_input_kernel, grid, (dy, weight, dx), integers, {**constexprs, **precision(dy.dtype)})
    return dx


@functools.lru_cache(maxsize=PLANS_KEPT)
def _backward_weight_plan(spec: ShiftSpec, tile: GemmTile, x_strides, dy_strides, device: torch.device,
                          multiprocessors: int):
    """(partial's shape, grid, integer arguments, constexprs) of ``shift_bwd_weight_kernel``.
    ``multiprocessors``, the device's SM count the splits follow, only keys the memo."""
    pixels = spec.batch * spec.out_height * spec.out_width
    filter_tiles = cdiv(spec.out_channels, tile.block_rows)
    channel_tiles = _weight_column_tiles(spec, tile.block_cols)
    splits = reduction_splits(tile, filter_tiles * channel_tiles, pixels, device)
    pixels_per_split = cdiv(cdiv(pixels, splits), tile.block_reduce) * tile.block_reduce
    row = spec.out_channels * (spec.in_channels + spec.bias)  # dw flattened, then the bias
    integers = (*_sizes(spec), *x_strides, *dy_strides, *_shift_args(spec), pixels_per_split, row)
    # x is flat only at stride 1, where its pixel p is the output's pixel p
    x_flat = spec.stride == 1 and _flat_pixels(spec.input_shape, x_strides)
    constexprs = dict(SEGMENTED=segmented(spec), GROUP_ALIGN=_group_align(spec), HAS_BIAS=spec.bias, X_FLAT=x_flat,
                      DY_FLAT=_flat_pixels(spec.output_shape, dy_strides),
                      **_constexprs(spec), **TILES["backward_weight"].launch_args(tile))
    return (splits, row), (filter_tiles, channel_tiles, splits), integers, constexprs


def backward_weight(dy, x, spec: ShiftSpec, tile: GemmTile):
    """(grad weight [N, C, 1, 1], grad bias or None), reduced over the pixels in fp32 (fp64)."""
    dy, x = int32_addressable(dy), int32_addressable(x)
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    if spec.batch * spec.out_height * spec.out_width == 0:
        db = torch.zeros(spec.out_channels, device=x.device, dtype=x.dtype) if spec.bias else None
        return torch.zeros(spec.weight_shape, device=x.device, dtype=x.dtype), db
    shape, grid, integers, constexprs = _backward_weight_plan(spec, tile, x.stride(), dy.stride(), x.device,
                                                              tiles.multiprocessor_count(x.device))
    partial = empty(shape, device=x.device, dtype=acc_dtype)
    launch(kernels.shift_bwd_weight_kernel, grid, (x, dy, partial), integers,
           {"BIAS_BY_DOT": x.dtype in (torch.float16, torch.bfloat16), **constexprs, **precision(x.dtype)})
    return sum_splits(partial, spec.weight_shape, (spec.out_channels,) if spec.bias else None, x.dtype)
