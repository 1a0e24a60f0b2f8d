"""Host side of the shuffled grouped 1 x 1 kernels: allocation, grids, tiles and their candidates."""

from __future__ import annotations

import functools
import math
from dataclasses import replace

import torch

from tritonconv import env, tiles
from tritonconv._launcher import launch
from tritonconv._layout import empty, empty_like_layout, int32_addressable, pixel_stride_align
from tritonconv.ops.shuffle import kernels
from tritonconv.ops.shuffle.spec import ShuffleConvSpec
from tritonconv.tiles import GemmTile, KernelTiles, TileTable, cdiv, precision, reduction_splits, sum_splits, wide_dtype


def _gemm_extent(spec: ShuffleConvSpec, kernel: str) -> tuple[int, int, int]:
    pixels = spec.batch * spec.height * spec.width
    if kernel == "forward":
        by_position = _position_forward(spec) or _interleaved_forward(spec)
        return pixels, spec.out_channels if by_position else spec.group_out, spec.group_in
    if kernel == "backward_input":
        all_channels = _dense_input_grad(spec) and spec.shuffle_groups > 1
        return pixels, spec.group_in, spec.out_channels if all_channels else spec.group_out
    if _dense_weight_grad(spec):
        return spec.out_channels, spec.in_channels, pixels
    return spec.group_out, spec.group_in, pixels


# Hopper's wgmma needs 64 rows per warp group; fewer rows lower to mma.sync (HMMA).
WGMMA_ROWS = 64
# rows = pixels, cols = filters (grad input: channels) of one group, reduce = the group's channels
# (128x64 at 4 warps spills: the shuffled store and the shuffled dy gather give every element its own
# address)
# The defaults reduce 64 channels a step: the loop's fixed cost (pipeline waits, masks, address bumps)
# is shared by 4 wgmmas per warp group instead of 2 (audit instr/HGMMA 31-42 -> 19-22 where a group
# has 40 channels or more; narrower groups are fitted back to 16 or 32).
_PIXEL_ROWS = (
    GemmTile(128, 64, 32, 8, 3), GemmTile(128, 64, 32, 4, 3), GemmTile(128, 32, 32, 4, 3),
    GemmTile(64, 64, 64, 4, 3),
    GemmTile(256, 64, 32, 8, 3), GemmTile(64, 32, 32, 4, 4), GemmTile(128, 128, 32, 8, 3),
)
_PIXEL_BLOCKS = ("BLOCK_M", "BLOCK_N", "BLOCK_K")
# The dense grad input (``_dense_input_grad``) selects dy's columns in registers and stores them to
# shared memory for the wgmma: 128 dy channels a step let 8 wgmmas share the step's fixed cost (audit
# instr/HGMMA 28.5 at 64x128x64 -> 22.9 on ShuffleNet's g3/g8 layers), and sg = 3 steps 120 of the 128
# columns (48 of 64 at 64).
_DENSE_INPUT_TILE = GemmTile(64, 128, 128, 8, 3)
# 4- and 8-byte elements: half the reduce (fp32: three stages of 64x128x128 would take 288 KB of shared
# memory, past the H100's 227 KB; 64x128x64 takes 144 KB).
_DENSE_INPUT_TILE_WIDE = GemmTile(64, 128, 64, 8, 3)
TILES = TileTable({
    "forward": KernelTiles(GemmTile(128, 64, 64, 8, 3), _PIXEL_ROWS, _PIXEL_BLOCKS),
    "backward_input": KernelTiles(GemmTile(128, 64, 64, 8, 3), (*_PIXEL_ROWS, _DENSE_INPUT_TILE,
                                                                 _DENSE_INPUT_TILE_WIDE), _PIXEL_BLOCKS),
    # rows = filters of one group (masked filter rows beat mma.sync), cols = the group's channels,
    # reduce = pixels
    "backward_weight": KernelTiles(GemmTile(64, 64, 64, 4, 3), (
        GemmTile(64, 64, 64, 4, 3), GemmTile(32, 32, 128, 4, 4), GemmTile(64, 32, 128, 4, 4),
        GemmTile(32, 64, 128, 4, 3),
    ), ("BLOCK_N", "BLOCK_C", "BLOCK_P"), min_rows=WGMMA_ROWS),
}, extent=_gemm_extent)
candidate_tiles = TILES.candidate_tiles
PLANS_KEPT = 1024  # launch plans memoized per launcher (one per shape, tile and layout)
# a grad-input step over a 2-byte dy gather: as many scalar loads per step as elements per thread
_GATHER_REDUCE = 32


def default_tile(spec: ShuffleConvSpec, kernel: str) -> GemmTile:
    if kernel == "backward_input" and (_dense_input_grad(spec) or _wide_vector_reduce(spec)):
        return TILES.fitted(_DENSE_INPUT_TILE_WIDE if wide_dtype(spec.dtype) else _DENSE_INPUT_TILE, spec, kernel)
    tile = TILES.default_tile(spec, kernel)
    if kernel == "backward_input" and _gathered_dy(spec) and tile.block_reduce > _GATHER_REDUCE:
        # dy read element by element: 64-channel steps would only double the scalar loads per step
        tile = replace(tile, block_reduce=_GATHER_REDUCE)
    return tile


_MAX_BLOCK_ROWS = max(tile.block_rows for kernel in TILES.kernels.values() for tile in kernel.candidates)


def _int32_pixels(spec: ShuffleConvSpec) -> bool:
    """Whether pixel indices (and one block past them) fit int32: the kernels divide them in int32."""
    return spec.batch * spec.height * spec.width + _MAX_BLOCK_ROWS < 2**31


def _flat_pixels(shape, strides) -> bool:
    """Whether pixel p = (b*H + h)*W + w of a tensor lies at p * (w stride), as in channels_last: the
    weight gradient then walks pixels by bumping one pointer."""
    batch, _, height, width = shape
    sb, _, sh, sw = strides
    return (batch == 1 or sb == height * width * sw) and (height == 1 or sh == width * sw)


def _blocked_shuffle(spec: ShuffleConvSpec) -> bool:
    """Whether a group's filters land at affine channels, pos(n) = n_local * sg + group: the shuffle's
    groups are the conv's (N/sg = N/G filters per block). The grad input then bumps dy's tile pointers
    by a constant."""
    return spec.shuffle_groups == spec.groups


def _by_position(spec: ShuffleConvSpec) -> bool:
    """Whether the one conv group's filters are shuffled onto all of dy's channels: the backward kernels
    then take dy's channels in memory order and permute the weight's rows instead."""
    return spec.groups == 1 and spec.shuffle_groups > 1


# The position forward's bound: the conv groups side by side in each block of output channels multiply
# the tensor-core work up to that of the dense C x N product (sg-fold with sg = G), whose FLOPs per byte
# are C N / (C + N); an H100's ridge is about 300 (989 TFLOP/s over 3.35 TB/s). Half of it keeps the
# product memory-bound with room for the selects: ShuffleNet V1's shuffled layers up to 480 -> 120 (g3)
# and 384 -> 192 (g8) take it.
POSITION_INTENSITY = 150


def _unaligned_groups(spec: ShuffleConvSpec) -> bool:
    """Whether unshuffled conv groups start at output channels off the 16-byte vectors (ShuffleNet V1
    g8's 45 filters a group of 360): the group-local forward would store them 2 bytes at a time."""
    return spec.shuffle_groups == 1 and spec.groups > 1 and spec.group_out * spec.torch_dtype.itemsize % 16 != 0


def _position_forward(spec: ShuffleConvSpec, y_strides: tuple | None = None) -> bool:
    """Whether the forward's columns are output channel positions (POSITIONS: contiguous stores): y's
    channels innermost, shuffled or in unaligned groups (``_unaligned_groups``), with one conv group or
    a product still memory-bound (``POSITION_INTENSITY``)."""
    if not (spec.shuffle_groups > 1 or _unaligned_groups(spec)) or not _channels_innermost(spec, y_strides):
        return False
    dense_intensity = spec.in_channels * spec.out_channels / (spec.in_channels + spec.out_channels)
    return spec.groups == 1 or dense_intensity <= POSITION_INTENSITY


# sg = G whose accumulators a tree of tl.join interleaves (a power of two; 8 accumulators of [128, 16] fp32
# take 64 registers a thread at 8 warps). Each group's filters in a block are at least a wgmma's 16 columns.
INTERLEAVED_GROUPS = (2, 4, 8)
WGMMA_MIN_COLS = 16


def _interleaved_forward(spec: ShuffleConvSpec, y_strides: tuple | None = None) -> bool:
    """Whether the forward computes a block of filters of every group and interleaves them into contiguous
    output rows (INTERLEAVED: pos = n_local * sg + group, vector stores, each group's own product only):
    the shuffle's blocks are the conv groups (``_blocked_shuffle``), sg in ``INTERLEAVED_GROUPS``, y's
    channels innermost. The position forward goes first where it is taken (sm_90a: about 0.7 warp-
    instructions per output element against 1.0, its sg-fold product still memory-bound); this path
    takes the layers past its bound, whose group-local stores would be 2 bytes every sg-th channel."""
    return (_blocked_shuffle(spec) and spec.shuffle_groups in INTERLEAVED_GROUPS
            and _channels_innermost(spec, y_strides))


def _interleaved_block(spec: ShuffleConvSpec, tile: GemmTile) -> int:
    """Filters of each group an INTERLEAVED program takes: the tile's output columns over sg, at least a
    wgmma's width."""
    return max(tile.block_cols // spec.shuffle_groups, WGMMA_MIN_COLS)


def describe_forward(spec: ShuffleConvSpec) -> str:
    """Which of the forward's formulations this call's shape takes, for ``explain`` (y in the spec's
    layout, as the launcher allocates it)."""
    if _position_forward(spec):
        what = ("the one conv group's filters in output order" if spec.groups == 1 else
                "each conv group's product over a block of consecutive output channels, the others' columns "
                "selected away (up to sg times the grouped product's tensor-core work)")
        return f"forward: contiguous output rows, {what}"
    if _interleaved_forward(spec):
        return ("forward: contiguous output rows, a block of every group's filters interleaved in registers "
                "(no extra tensor-core work)")
    if not spec.channels_last:
        return "forward: each group's filters stored along the pixels (NCHW)"
    if spec.shuffle_groups > 1:
        return "forward: each group's filters stored every sg-th output channel, one element at a time"
    return "forward: each group's filters stored as its own contiguous channels"


def _dense_input_grad(spec: ShuffleConvSpec, dy_strides: tuple | None = None) -> bool:
    """Whether the grad input reads dy's channels in memory order and selects the group's (every dy load
    a vector), in channels_last (see ``_dense_weight_grad``): several conv groups shuffled onto every
    sg-th channel by sg = G (``_blocked_shuffle``; all channels, G times the tensor-core work), or
    unshuffled at an odd group width (the group's channels from the aligned one below)."""
    channels_innermost = _channels_innermost(spec, dy_strides)
    unshuffled_odd = spec.shuffle_groups == 1 and spec.group_out % 2 == 1
    return spec.groups > 1 and (_blocked_shuffle(spec) or unshuffled_odd) and channels_innermost


def _channels_innermost(spec: ShuffleConvSpec, dy_strides: tuple | None) -> bool:
    """dy's channels innermost (the spec's layout where no strides are given)."""
    return spec.channels_last if dy_strides is None else dy_strides[1] == 1 and spec.out_channels > 1


def _dense_step(block_reduce: int, shuffle_groups: int, element_size: int) -> int:
    """dy channels a dense grad-input step reduces: the most that fit the block and are a multiple of
    the shuffle groups (every step then holds the same groups at the same columns) and of the 16-byte
    vector (every step's loads stay aligned); a narrower vector where the block holds none. sg = 3 in
    bf16: 120 of a 128-channel block, 48 of a 64-channel one (the remaining columns stay zero)."""
    vector = 16 // element_size
    while vector > 1 and block_reduce < math.lcm(shuffle_groups, vector):
        vector //= 2
    unit = math.lcm(shuffle_groups, vector)
    return max(block_reduce // unit, 1) * unit


def _dense_weight_grad(spec: ShuffleConvSpec, dy_strides: tuple | None = None) -> bool:
    """Whether the grad weight takes the dense product of contiguous dy and x channel ranges and stores
    the same-group entries (G times the tensor-core work, every load a vector): several conv groups whose
    dy channels would otherwise be gathered, shuffled onto every sg-th channel or at odd group widths,
    in channels_last (channels innermost; in NCHW a group's tile is contiguous along pixels anyway)."""
    channels_innermost = _channels_innermost(spec, dy_strides)
    unaligned = spec.group_out % 2 == 1 or spec.group_in % 2 == 1
    return spec.groups > 1 and (spec.shuffle_groups > 1 or unaligned) and channels_innermost


def _wide_vector_reduce(spec: ShuffleConvSpec) -> bool:
    """Whether the grad input reduces over more than 64 of a group's dy channels read as vectors: there
    128 channels a step (``_DENSE_INPUT_TILE``, fitted) share the step's fixed cost among twice the
    wgmmas (sm_90a audit, ShuffleNet V1's unshuffled expansions, 72-160 filters a group: instr/HGMMA
    22.2-30.2 at 128x64x64 -> 15.0-20.9)."""
    return spec.group_out > 64 and not _gathered_dy(spec)


def _gathered_dy(spec: ShuffleConvSpec) -> bool:
    """Whether the grad input reads dy with 2-byte loads: shuffled onto every sg-th channel (several
    conv groups), or an odd channel count (no vector alignment)."""
    if _dense_input_grad(spec):
        return False
    shuffled = spec.shuffle_groups > 1 and not _by_position(spec)
    return shuffled or spec.group_out % 2 == 1 or spec.out_channels % 2 == 1


def _sizes(spec: ShuffleConvSpec) -> tuple:
    return (spec.batch * spec.height * spec.width, spec.height * spec.width, spec.out_channels, spec.group_in,
            spec.group_out, spec.shuffle_groups)


# Each launcher's plan (grid, the kernel's integer arguments and constexprs) is a pure function of the
# spec, the tile and the layouts: memoized, so a repeated call only allocates and launches. Switches that
# may change between calls (tf32, the interpreter, the device's SM count) are read per call.

def _one_step_forward(spec: ShuffleConvSpec, tile: GemmTile) -> bool:
    """Whether the forward reduces a group's channels in one BLOCK_K step (ShuffleNet's 12-24-channel
    groups): its programs then walk several pixel tiles each (``FORWARD_PROGRAMS_PER_SM``)."""
    return spec.group_in <= tile.block_reduce


# One-step forward programs per SM: two resident 8-warp blocks (the audit's 16 warps per SM at 128x64x16)
# each walking its share of the pixel tiles; a tile's own cost is then its load, wgmma and store, the
# weight tile and the index math being paid once per program.
FORWARD_PROGRAMS_PER_SM = 2


def _flat_int32_offsets(spec: ShuffleConvSpec, x_strides, y_strides) -> bool:
    """Whether x and y hold pixel p at p * (w stride) (``_flat_pixels``) and every element offset, one
    block of pixels past the end included, fits int32: the one-step forward then multiplies, never
    divides, per pixel."""
    pixels = spec.batch * spec.height * spec.width + _MAX_BLOCK_ROWS
    last = max(pixels * x_strides[3] + spec.in_channels * x_strides[1],
               pixels * y_strides[3] + spec.out_channels * y_strides[1])
    return (_flat_pixels(spec.input_shape, x_strides) and _flat_pixels(spec.output_shape, y_strides)
            and _int32_pixels(spec) and last < 2**31)


def _store_align(spec: ShuffleConvSpec, y_strides: tuple, by_position: bool) -> int:
    """The forward's Y_ALIGN, what the kernel promises of y's pixel strides and of where its column blocks
    start (``pixel_stride_align``): blocks of output positions (``by_position``: the position and
    interleaved forwards) start at block multiples; an unshuffled group's filters at multiples of its
    width (72 a group: 16-byte stores once promised). Shuffled groups store every sg-th channel: no
    vector to keep."""
    if by_position:
        return pixel_stride_align(y_strides, spec.out_channels)
    if spec.shuffle_groups > 1 or y_strides[1] != 1:
        return 1
    return pixel_stride_align(y_strides, spec.group_out)


@functools.lru_cache(maxsize=PLANS_KEPT)
def _forward_plan(spec: ShuffleConvSpec, tile: GemmTile, x_strides, y_strides, has_bias: bool,
                  multiprocessors: int):
    """(grid, integer arguments, constexprs); ``multiprocessors``, the device's SM count the one-step
    forward's pixel programs follow."""
    pixel_tiles = cdiv(spec.batch * spec.height * spec.width, tile.block_rows)
    positions = _position_forward(spec, y_strides)
    interleaved = _interleaved_forward(spec, y_strides) and not positions
    block_n = _interleaved_block(spec, tile) if interleaved else tile.block_cols
    if interleaved:
        filter_tiles = cdiv(spec.group_out, block_n)
    elif positions:
        filter_tiles = cdiv(spec.out_channels, tile.block_cols)
    else:
        filter_tiles = spec.groups * cdiv(spec.group_out, tile.block_cols)
    one_step = _one_step_forward(spec, tile) and not interleaved
    pixel_programs = (min(pixel_tiles, cdiv(FORWARD_PROGRAMS_PER_SM * multiprocessors, filter_tiles))
                      if one_step or positions else pixel_tiles)
    grid = (pixel_programs, filter_tiles)
    integers = (*_sizes(spec), *x_strides, spec.width, *y_strides, pixel_tiles)
    flat = _flat_int32_offsets(spec, x_strides, y_strides)
    constexprs = dict(ALIGN=math.gcd(x_strides[0], x_strides[2], x_strides[3], spec.group_in, 8),
                      Y_ALIGN=_store_align(spec, y_strides, positions or interleaved),
                      INT32_PIXELS=_int32_pixels(spec), SHUFFLED=spec.shuffle_groups > 1, HAS_BIAS=has_bias,
                      ONE_STEP=one_step, POSITIONS=positions, ONE_GROUP=spec.groups == 1, FLAT=flat,
                      INTERLEAVED=spec.shuffle_groups if interleaved else 0,
                      **{**TILES["forward"].launch_args(tile), "BLOCK_N": block_n})
    return grid, integers, constexprs


def forward(x, weight, bias, spec: ShuffleConvSpec, tile: GemmTile) -> torch.Tensor:
    y = empty_like_layout(spec.output_shape, x)  # in x's own layout, before x may be compacted
    x = int32_addressable(x)
    if y.numel() == 0:
        return y
    weight = weight.reshape(spec.out_channels, spec.group_in).contiguous()
    grid, integers, constexprs = _forward_plan(spec, tile, x.stride(), y.stride(), bias is not None,
                                               tiles.multiprocessor_count(x.device))
    launch(kernels.shuffle_conv_fwd_kernel, grid, (x, weight, bias.contiguous() if bias is not None else None, y),
           integers, {**precision(x.dtype), **constexprs})
    return y


@functools.lru_cache(maxsize=PLANS_KEPT)
def _backward_input_plan(spec: ShuffleConvSpec, tile: GemmTile, dy_strides, dx_strides, element_size: int,
                         dense: bool | None):
    # shuffled, a step holds every group's columns; unshuffled, any group's window
    fits = spec.shuffle_groups == 1 or _blocked_shuffle(spec) and spec.shuffle_groups <= tile.block_reduce
    dense = _dense_input_grad(spec, dy_strides) and fits if dense is None else dense
    if dense and not fits:
        raise ValueError(f"the dense grad input needs shuffle_groups = 1 or groups <= the block's "
                         f"{tile.block_reduce} channels, got {spec.describe()}")
    # dense: dy's alignment and the group width's apart (the steps start at dy's vectors, not groups)
    align = math.gcd(dy_strides[0], dy_strides[2], dy_strides[3], *((spec.out_channels,) if dense else
                                                                    (spec.group_in, spec.group_out)), 8)
    grid = (cdiv(spec.batch * spec.height * spec.width, tile.block_rows),
            spec.groups * cdiv(spec.group_in, tile.block_cols))
    integers = (*_sizes(spec), *dy_strides, spec.width, *dx_strides)
    constexprs = dict(ALIGN=align, IN_ALIGN=math.gcd(spec.group_in, 8) if dense else align,
                      DX_ALIGN=pixel_stride_align(dx_strides),
                      INT32_PIXELS=_int32_pixels(spec), SHUFFLED=spec.shuffle_groups > 1,
                      BLOCKED=_blocked_shuffle(spec), BY_POSITION=_by_position(spec), DENSE=dense,
                      STEP=_dense_step(tile.block_reduce, spec.shuffle_groups, element_size) if dense else 0,
                      TRANSPOSED=tile.block_cols >= WGMMA_ROWS, **TILES["backward_input"].launch_args(tile))
    return grid, integers, constexprs


def backward_input(dy, weight, spec: ShuffleConvSpec, tile: GemmTile, like: torch.Tensor,
                   dense: bool | None = None) -> torch.Tensor:
    """dx in ``like``'s layout. ``dense``: reduce over all dy channels and select the group's (None:
    ``_dense_input_grad`` decides; it needs shuffle groups = conv groups)."""
    dy = int32_addressable(dy)
    dx = empty_like_layout(spec.input_shape, like)
    if dx.numel() == 0:
        return dx
    grid, integers, constexprs = _backward_input_plan(spec, tile, dy.stride(), dx.stride(), dy.element_size(),
                                                      dense)
    weight = weight.reshape(spec.out_channels, spec.group_in).contiguous()
    launch(kernels.shuffle_conv_bwd_input_kernel, grid, (dy, weight, dx), integers,
           {"PACKED_SELECT": dy.element_size() == 2 and not env.triton_interpret(),
            **precision(dy.dtype), **constexprs})
    return dx


@functools.lru_cache(maxsize=PLANS_KEPT)
def _backward_weight_plan(spec: ShuffleConvSpec, tile: GemmTile, x_strides, dy_strides, dense: bool | None,
                          device: torch.device, multiprocessors: int):
    """(grid, integer arguments, constexprs, splits, partial row) of the weight gradient; ``multiprocessors``,
    the device's SM count the splits follow, only keys the memo."""
    pixels = spec.batch * spec.height * spec.width
    dense = _dense_weight_grad(spec, dy_strides) if dense is None else dense
    if dense:
        filter_tiles = cdiv(spec.out_channels, tile.block_rows)
        column_tiles = cdiv(spec.in_channels, tile.block_cols)
    else:
        filter_tiles = spec.groups * cdiv(spec.group_out, tile.block_rows)
        column_tiles = cdiv(spec.group_in, tile.block_cols)
    # dense tiles start at block multiples, grouped ones at group starts (their widths join the divisor)
    widths = (spec.in_channels, spec.out_channels) if dense else (spec.group_in, spec.group_out)
    splits = reduction_splits(tile, filter_tiles * column_tiles, pixels, device)
    per_split = cdiv(cdiv(pixels, splits), tile.block_reduce) * tile.block_reduce
    row = spec.out_channels * (spec.group_in + spec.bias)  # dw flattened, then the bias
    integers = (*_sizes(spec), per_split, row, *x_strides, spec.width, *dy_strides)
    constexprs = dict(
        ALIGN=math.gcd(x_strides[0], x_strides[2], x_strides[3], dy_strides[0], dy_strides[2], dy_strides[3],
                       *widths, 8),
        FLAT=_flat_pixels(spec.input_shape, x_strides) and _flat_pixels(spec.output_shape, dy_strides),
        SHUFFLED=spec.shuffle_groups > 1, BY_POSITION=_by_position(spec), DENSE=dense, HAS_BIAS=spec.bias,
        **TILES["backward_weight"].launch_args(tile))
    return (filter_tiles, column_tiles, splits), integers, constexprs, splits, row


def backward_weight(dy, x, spec: ShuffleConvSpec, tile: GemmTile, dense: bool | None = None):
    """(grad weight [N, C/G, 1, 1], grad bias or None), split partials summed in a fixed order.
    ``dense``: the dense product with same-group stores (None: ``_dense_weight_grad`` decides)."""
    dy, x = int32_addressable(dy), int32_addressable(x)
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    if spec.batch * spec.height * spec.width == 0:
        db = torch.zeros(spec.out_channels, device=x.device, dtype=x.dtype) if spec.bias else None
        return torch.zeros(spec.weight_shape, device=x.device, dtype=x.dtype), db
    grid, integers, constexprs, splits, row = _backward_weight_plan(
        spec, tile, x.stride(), dy.stride(), dense, x.device, tiles.multiprocessor_count(x.device))
    partial = empty((splits, row), device=x.device, dtype=acc_dtype)
    launch(kernels.shuffle_conv_bwd_weight_kernel, grid, (x, dy, partial), integers,
           {**precision(x.dtype), **constexprs})
    return sum_splits(partial, spec.weight_shape, (spec.out_channels,) if spec.bias else None, x.dtype)
