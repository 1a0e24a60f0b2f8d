"""Host side of the HetConv2d kernels: allocation, layouts, grids, tile configs and their candidates.

Layouts. The kernels read activations channels_last (NHWC in memory). An NCHW or strided input is
converted once at the boundary (one copy): read through NCHW strides, every activation load of an
implicit GEMM becomes a scalar 2-byte load at a tap-shifted, unaligned address, which costs more than
the copy (sm_90 SASS of the forward, bf16, 64 channels, p=4: 32 LDG.E.U16 and 90 instructions per HGMMA
in the main loop through NCHW strides; 0 and 45 channels_last). Outputs are written through their strides
in the caller's layout.
The weight is read through its strides; channels_last ([N, k, k, C/p] in memory, the layout HetConv2d
allocates its parameter in) lets the forward and the input gradient load it as 16-byte vectors. Any
other weight layout is copied to channels_last per call (one small launch): nothing is cached, so
nothing can go stale (``.data`` writes, ``load_state_dict``, optimizers all see the parameter itself).

Launches: forward 1; backward 3 (input gradient, weight-gradient partials, one kernel that sums the
partials, casts them and scatters them into weight, weight_pw and bias), for channels_last inputs and a
channels_last weight.
"""

from __future__ import annotations

import functools

import torch

from tritonconv import tiles
from tritonconv._launcher import launch
from tritonconv._layout import empty, empty_like_layout
from tritonconv.ops.hetconv import kernels
from tritonconv.ops.hetconv.spec import HetConvSpec
from tritonconv.tiles import (
    MIN_DOT_TILE,
    GemmTile,
    KernelTiles,
    TileTable,
    accumulator_dtype,
    cdiv,
    next_power_of_2,
    precision,
    reduction_splits,
)

# The weight layout the kernels read without a copy (HetConv2d allocates its weight in it).
KERNEL_WEIGHT_FORMAT = torch.channels_last

# Hopper's wgmma needs 64 rows per warp group; fewer rows lower to mma.sync (HMMA).
WGMMA_ROWS = 64
INT32_LIMIT = 2**31
REDUCE_BLOCK = 1024  # elements per program of the weight-gradient reduction
PLANS_KEPT = 1024  # launch plans memoized per launcher (one per shape, tile and layout)


def _pow2(n: int) -> int:
    return next_power_of_2(max(n, 1))


def _gemm_extent(spec: HetConvSpec, kernel: str) -> tuple[int, int, int]:
    """(rows, cols, reduce) of the kernel's GEMM, to fit tiles to the shape. Pixel extents are rounded
    per axis, as the kernels tile (batch, rows, columns)."""
    if kernel == "forward":
        pixels = _pow2(spec.batch) * _pow2(spec.out_height) * _pow2(spec.out_width)
        return pixels, spec.group_out, _reduce_extent(spec.group_in, spec.kernel_size)
    if kernel == "backward_input":
        s = spec.stride
        pixels = _pow2(spec.batch) * _pow2(-(-spec.height // s)) * _pow2(-(-spec.width // s))
        return pixels, spec.group_in, _reduce_extent(spec.group_out, spec.kernel_size)
    pixels = _pow2(spec.batch) * _pow2(spec.out_height) * _pow2(spec.out_width)
    rows = max(spec.in_channels, (spec.kernel_size**2 - 1) * spec.group_in)
    return rows, spec.group_out, pixels


def _reduce_extent(group: int, kernel_size: int) -> int:
    """The reduction a K block is fitted to: a power-of-two group's k x k taps are packed into K blocks
    (``_k_blocks``), so its extent is taps x channels; any other group is reduced per tap."""
    return kernel_size**2 * group if _is_pow2(group) else group


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _k_blocks(block: int, group: int) -> tuple[int, bool, int]:
    """(BLOCK_K, EVEN_K, TAP_CH) for a group of ``group`` channels (forward) or filters (input gradient).

    A power-of-two group smaller than the K block packs BLOCK_K // group taps into each K block
    (TAP_CH = group): per-tap addressing and loop overhead are shared by one larger dot. Its 1 x 1 part
    then takes the per-element path (EVEN_K False), whose chunks of BLOCK_K span several groups. Otherwise
    one K block is a chunk of one tap's channels (TAP_CH = BLOCK_K), as ``_even_block`` fits it."""
    if _is_pow2(group) and group < block:
        return block, False, group
    block_k, even = _even_block(block, group)
    return block_k, even, block_k


# rows = output pixels (a [batch, rows, columns] tile: BLOCK_B x BLOCK_H x BLOCK_W, from ``pixel_tile``),
# cols = filters of one group, reduce = channels of one group (BLOCK_K and TAP_CH from ``_k_blocks``).
# Every candidate compiles for sm_90 within the H100's shared memory in bf16 and fp32 without spilling
# in bf16 (256x256 tiles spill; 256x64x64 at 3 stages needs 245760 bytes in fp32).
_PIXEL_ROWS = (
    GemmTile(128, 64, 64, 4, 3), GemmTile(128, 128, 64, 8, 3), GemmTile(128, 64, 32, 4, 4),
    GemmTile(64, 64, 64, 4, 3), GemmTile(256, 64, 64, 8, 2), GemmTile(128, 256, 64, 8, 2),
    GemmTile(256, 128, 64, 8, 2), GemmTile(128, 128, 32, 8, 4), GemmTile(64, 128, 64, 4, 3),
    GemmTile(64, 32, 64, 4, 4), GemmTile(128, 32, 64, 4, 3), GemmTile(256, 64, 32, 8, 2),
)
TILES = TileTable({
    "forward": KernelTiles(GemmTile(128, 64, 64, 4, 3), _PIXEL_ROWS, (None, "BLOCK_N", None)),
    # rows = input pixels, cols = channels, reduce = filters. fp32 takes the tile on two warp groups: one
    # spills 6-7 registers on ResNet-50's stride-2 shapes (sm_90a fp32 audit), two spill none.
    "backward_input": KernelTiles(GemmTile(128, 64, 64, 4, 3), (*_PIXEL_ROWS, GemmTile(128, 64, 64, 8, 3)),
                                  (None, "BLOCK_N", None), wide_default=GemmTile(128, 64, 64, 8, 3)),
    # rows = weight columns (channel x tap; >= 64 for wgmma), cols = filters, reduce = output pixels.
    # 128 rows x 128 pixels on one warp group: 16 HGMMAs per step share the step's bookkeeping (sm_90
    # bf16 audit 14-17 instructions per HGMMA; 64 x 64 x 64 steps: 23-34). Three stages of 128 x 128
    # pixel steps pass the shared memory in fp32; two keep two blocks resident at 64 filters in bf16.
    # fp32 and fp64 keep 64 x 64 x 64: tf32 reads the transposed x tile through registers, and 128-row or
    # 128-pixel tiles spill there (255 registers).
    "backward_weight": KernelTiles(GemmTile(128, 64, 128, 4, 2), (
        GemmTile(128, 64, 128, 4, 2), GemmTile(128, 32, 128, 4, 2), GemmTile(64, 64, 128, 4, 3),
        GemmTile(128, 64, 64, 4, 3), GemmTile(64, 64, 64, 4, 3), GemmTile(128, 64, 64, 8, 3),
        GemmTile(64, 128, 64, 8, 3), GemmTile(128, 128, 64, 8, 3), GemmTile(64, 32, 64, 4, 4),
    ), (None, None, None), min_rows=WGMMA_ROWS, wide_default=GemmTile(64, 64, 64, 4, 3)),
}, extent=_gemm_extent)
default_tile, candidate_tiles = TILES.default_tile, TILES.candidate_tiles


# ---- layouts and tiles ------------------------------------------------------------------------------

def _channels_last(t: torch.Tensor) -> torch.Tensor:
    """The kernels' activation layout: a no-op for channels_last tensors, one copy otherwise."""
    return t if t.is_contiguous(memory_format=torch.channels_last) else t.contiguous(memory_format=torch.channels_last)


def _weight_for_kernels(weight: torch.Tensor) -> torch.Tensor:
    return weight if weight.is_contiguous(memory_format=KERNEL_WEIGHT_FORMAT) else \
        weight.contiguous(memory_format=KERNEL_WEIGHT_FORMAT)


def layout_copies(x: torch.Tensor, weight: torch.Tensor) -> str:
    """What the launchers copy for this call's layouts (for ``explain``), or '' when nothing."""
    notes = []
    if not x.is_contiguous(memory_format=torch.channels_last):
        notes.append("the input (and in the backward the output gradient) is not channels_last: it is copied to "
                     "channels_last at the kernel boundary, once per call (the kernels' loads are 16-byte vectors "
                     "along channels; read through NCHW strides they would be scalar 2-byte loads); outputs keep "
                     "the input's layout")
    if not weight.is_contiguous(memory_format=KERNEL_WEIGHT_FORMAT):
        notes.append("the weight is not channels_last: it is copied to channels_last per call (HetConv2d allocates "
                     "it so)")
    return "; ".join(notes)


def pixel_tile(block_rows: int, batch: int, height: int, width: int) -> tuple[int, int, int]:
    """(BLOCK_B, BLOCK_H, BLOCK_W): a [images, rows, columns] tile of about ``block_rows`` pixels; several
    images share a tile only when one image is smaller than it. At least MIN_DOT_TILE rows."""
    block_w = min(_pow2(width), block_rows)
    block_h = min(_pow2(height), max(block_rows // block_w, 1))
    block_b = min(_pow2(batch), max(block_rows // (block_w * block_h), 1))
    block_b = max(block_b, -(-MIN_DOT_TILE // (block_w * block_h)))
    return block_b, block_h, block_w


def _even_block(block: int, extent: int) -> tuple[int, bool]:
    """The largest power-of-two block <= ``block`` (and >= the dot minimum) that divides ``extent``, and
    True; else ``block`` fitted to the extent and False (the kernels' per-element path)."""
    candidate = block
    while candidate >= MIN_DOT_TILE:
        if extent % candidate == 0:
            return candidate, True
        candidate //= 2
    return min(block, max(MIN_DOT_TILE, _pow2(extent))), False


def _fits_int32(block_b: int, *image_elements: int) -> bool:
    """The kernels address inside a tile's BLOCK_B images in int32 (only the tile base is int64)."""
    return all(block_b * elements < INT32_LIMIT for elements in image_elements)


def _grid_tiles(block_b, block_h, block_w, batch, height, width):
    return cdiv(batch, block_b), cdiv(height, block_h), cdiv(width, block_w)


# ---- launchers --------------------------------------------------------------------------------------

# Each launcher's plan (grid, the kernel's integer arguments and constexprs) is a pure function of the
# spec, the tile and the strides: memoized, so a repeated call only allocates and launches (about 13 us
# less per launch on the CPU). Switches that may change between calls (tf32, the interpreter, the
# device's SM count) are read per call and passed in or applied outside.

@functools.lru_cache(maxsize=PLANS_KEPT)
def _forward_plan(spec: HetConvSpec, tile: GemmTile, x_strides, y_strides, w_strides):
    """(grid, integer arguments, constexprs) of ``hetconv_fwd_kernel``; None when one tile of images passes
    int32 addressing."""
    block_b, block_h, block_w = pixel_tile(tile.block_rows, spec.batch, spec.out_height, spec.out_width)
    if not _fits_int32(block_b, spec.in_channels * spec.height * spec.width,
                       spec.out_channels * spec.out_height * spec.out_width):
        return None
    block_k, even, tap_ch = _k_blocks(tile.block_reduce, spec.group_in)
    filter_tiles = spec.p * cdiv(spec.group_out, tile.block_cols)
    images, tiles_h, tiles_w = _grid_tiles(block_b, block_h, block_w, spec.batch, spec.out_height, spec.out_width)
    integers = (spec.batch, spec.in_channels, spec.height, spec.width, spec.out_height, spec.out_width,
                *x_strides, *y_strides, *w_strides, spec.group_in, spec.group_out, filter_tiles, tiles_h, tiles_w)
    constexprs = dict(K=spec.kernel_size, STRIDE=spec.stride, PAD=spec.padding, EVEN_K=even, BLOCK_B=block_b,
                      BLOCK_H=block_h, BLOCK_W=block_w, BLOCK_K=block_k, TAP_CH=tap_ch,
                      **TILES["forward"].launch_args(tile))
    return (filter_tiles * images * tiles_h * tiles_w,), integers, constexprs


def forward(x, weight, weight_pw, bias, spec: HetConvSpec, tile: GemmTile) -> torch.Tensor:
    y = empty_like_layout(spec.output_shape, x)
    if y.numel() == 0:
        return y
    x, weight, weight_pw = _channels_last(x), _weight_for_kernels(weight), weight_pw.contiguous()
    plan = _forward_plan(spec, tile, x.stride(), y.stride(), weight.stride())
    if plan is None:
        from tritonconv.ops.hetconv import reference  # a single image past 2^31 elements
        return reference.fallback_forward(x, weight, weight_pw, bias, spec).contiguous(
            memory_format=torch.channels_last if spec.channels_last else torch.contiguous_format)
    grid, integers, constexprs = plan
    launch(kernels.hetconv_fwd_kernel, grid, (x, weight, weight_pw, bias.contiguous() if bias is not None else None, y),
           integers, {"HAS_BIAS": bias is not None, **precision(x.dtype), **constexprs})
    return y


@functools.lru_cache(maxsize=PLANS_KEPT)
def _backward_input_plan(spec: HetConvSpec, tile: GemmTile, dy_strides, dx_strides, w_strides):
    """(grid, integer arguments, constexprs) of ``hetconv_bwd_input_kernel``; None past int32 addressing."""
    s = spec.stride
    rows, columns = -(-spec.height // s), -(-spec.width // s)
    block_b, block_h, block_w = pixel_tile(tile.block_rows, spec.batch, rows, columns)
    if not _fits_int32(block_b, spec.in_channels * spec.height * spec.width,
                       spec.out_channels * spec.out_height * spec.out_width):
        return None
    block_k, even, tap_ch = _k_blocks(tile.block_reduce, spec.group_out)
    channel_tiles = spec.p * cdiv(spec.group_in, tile.block_cols)
    images, tiles_h, tiles_w = _grid_tiles(block_b, block_h, block_w, spec.batch, rows, columns)
    integers = (spec.batch, spec.in_channels, spec.height, spec.width, spec.out_channels, spec.out_height,
                spec.out_width, *dy_strides, *dx_strides, *w_strides, spec.group_in, spec.group_out, channel_tiles,
                tiles_h, tiles_w)
    constexprs = dict(K=spec.kernel_size, STRIDE=s, PAD=spec.padding, EVEN_K=even, BLOCK_B=block_b, BLOCK_H=block_h,
                      BLOCK_W=block_w, BLOCK_K=block_k, TAP_CH=tap_ch, **TILES["backward_input"].launch_args(tile))
    return (channel_tiles * images * s * s * tiles_h * tiles_w,), integers, constexprs


def backward_input(dy, weight, weight_pw, spec: HetConvSpec, tile: GemmTile, like: torch.Tensor) -> torch.Tensor:
    dx = empty_like_layout(spec.input_shape, like)
    if dx.numel() == 0:
        return dx
    dy, weight, weight_pw = _channels_last(dy), _weight_for_kernels(weight), weight_pw.contiguous()
    plan = _backward_input_plan(spec, tile, dy.stride(), dx.stride(), weight.stride())
    if plan is None:
        from tritonconv.ops.hetconv import reference
        zeros = torch.zeros(spec.input_shape, device=dy.device, dtype=dy.dtype)
        dx_ref = reference.fallback_backward(dy, zeros, weight, weight_pw, spec, True, False)[0]
        return dx.copy_(dx_ref)
    grid, integers, constexprs = plan
    launch(kernels.hetconv_bwd_input_kernel, grid, (dy, weight, weight_pw, dx), integers,
           {**precision(dy.dtype), **constexprs})
    return dx


@functools.lru_cache(maxsize=PLANS_KEPT)
def _backward_weight_plan(spec: HetConvSpec, tile: GemmTile, x_strides, dy_strides, dw_strides,
                          device: torch.device, multiprocessors: int):
    """The weight gradient's two launches: ((grid, integer arguments, constexprs) of the partials kernel,
    (grid, integer arguments) of the reduction, (splits, partial columns)); None past int32 addressing.
    ``multiprocessors``, the device's SM count the splits follow, only keys the memo."""
    block_b, block_h, block_w = pixel_tile(tile.block_reduce, spec.batch, spec.out_height, spec.out_width)
    if not _fits_int32(block_b, spec.in_channels * spec.height * spec.width,
                       spec.out_channels * spec.out_height * spec.out_width):
        return None
    k2 = spec.kernel_size**2
    block_r, block_n = tile.block_rows, tile.block_cols
    channels_per_tap = min(_pow2(spec.group_in), block_r)
    channel_blocks = cdiv(spec.group_in, channels_per_tap)
    off_row_tiles = channel_blocks * cdiv(k2 - 1, block_r // channels_per_tap) if k2 > 1 else 0
    off_col_tiles = cdiv(spec.group_out, block_n)
    centre_col_tiles = cdiv(spec.out_channels, block_n)
    centre_programs = cdiv(spec.in_channels, block_r) * centre_col_tiles
    programs = centre_programs + spec.p * off_row_tiles * off_col_tiles
    images, tiles_h, tiles_w = _grid_tiles(block_b, block_h, block_w, spec.batch, spec.out_height, spec.out_width)
    # the kernel's BLOCK_B > 1 path takes a tile to be whole images, as pixel_tile makes it
    assert block_b == 1 or tiles_h == tiles_w == 1, (block_b, tiles_h, tiles_w)
    pixel_tiles = images * tiles_h * tiles_w
    splits = reduction_splits(tile, programs, pixel_tiles * tile.block_reduce, device)
    tiles_per_split = cdiv(pixel_tiles, splits)
    splits = cdiv(pixel_tiles, tiles_per_split)
    columns = spec.in_channels + (k2 - 1) * spec.group_in + (1 if spec.bias else 0)
    integers = (spec.batch, spec.in_channels, spec.height, spec.width, spec.out_channels, spec.out_height,
                spec.out_width, *x_strides, *dy_strides, spec.group_in, spec.group_out, columns, centre_col_tiles,
                centre_programs, off_col_tiles, channel_blocks, max(off_row_tiles, 1), tiles_h, tiles_w, pixel_tiles,
                tiles_per_split)
    constexprs = dict(K=spec.kernel_size, STRIDE=spec.stride, PAD=spec.padding, HAS_BIAS=spec.bias,
                      CHANNELS_PER_TAP=channels_per_tap, BLOCK_R=block_r, BLOCK_N=block_n, BLOCK_B=block_b,
                      BLOCK_H=block_h, BLOCK_W=block_w, **TILES["backward_weight"].launch_args(tile))
    reduce_integers = (spec.out_channels, spec.in_channels, spec.group_in, spec.group_out, columns, splits,
                       *dw_strides)
    return (((programs, splits), integers, constexprs),
            ((cdiv(spec.out_channels * columns, REDUCE_BLOCK),), reduce_integers), (splits, columns))


def grad_weight_format(weight: torch.Tensor | None) -> torch.memory_format:
    """The layout of grad weight, whichever backend computes it (the operator's fake says the same):
    ``weight``'s, channels_last (the kernels' layout) without one, contiguous for any other layout."""
    if weight is None or weight.is_contiguous(memory_format=KERNEL_WEIGHT_FORMAT):
        return KERNEL_WEIGHT_FORMAT
    return torch.contiguous_format


def backward_weight(dy, x, spec: HetConvSpec, tile: GemmTile, weight: torch.Tensor | None = None):
    """(grad weight, grad weight_pw, grad bias or None), reduced over the batch in fp32 (fp64).

    Grad weight comes back in ``weight``'s layout (channels_last without one), so autograd accumulates
    it into the parameter without a copy.
    """
    dtype = x.dtype
    dw = empty(spec.weight_shape, device=x.device, dtype=dtype, memory_format=grad_weight_format(weight))
    dpw = empty(spec.weight_pw_shape, device=x.device, dtype=dtype)
    db = empty(spec.out_channels, device=x.device, dtype=dtype) if spec.bias else None
    pixels = spec.batch * spec.out_height * spec.out_width
    if pixels == 0:
        return dw.zero_(), dpw.zero_(), db.zero_() if db is not None else None

    x, dy = _channels_last(x), _channels_last(dy)
    plan = _backward_weight_plan(spec, tile, x.stride(), dy.stride(), dw.stride(), x.device,
                                 tiles.multiprocessor_count(x.device))
    if plan is None:
        from tritonconv.ops.hetconv import reference
        weight_stub = torch.empty(spec.weight_shape, device=x.device, dtype=dtype)
        pw_stub = torch.empty(spec.weight_pw_shape, device=x.device, dtype=dtype)
        _, gw, gpw, gb = reference.fallback_backward(dy, x, weight_stub, pw_stub, spec, False, True)
        return dw.copy_(gw), dpw.copy_(gpw), db.copy_(gb) if db is not None else None
    (grid, integers, constexprs), (reduce_grid, reduce_integers), (splits, columns) = plan
    acc_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    partial = empty((splits, spec.out_channels, columns), device=x.device, dtype=acc_dtype)
    launch(kernels.hetconv_bwd_weight_kernel, grid, (x, dy, partial), integers,
           {**precision(dtype), **constexprs})
    launch(kernels.hetconv_weight_reduce_kernel, reduce_grid, (partial, dw, dpw, db), reduce_integers,
           {"K": spec.kernel_size, "HAS_BIAS": spec.bias, "ACC_DTYPE": accumulator_dtype(dtype), "BLOCK": REDUCE_BLOCK})
    return dw, dpw, db
