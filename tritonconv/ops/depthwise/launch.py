"""Host side of the depthwise kernels: allocation, grids, tile configs and their candidates.

Tiles: ``block_rows`` pixels x ``block_cols`` channels; ``block_reduce`` is unused (no GEMM reduction)
and ``splits`` divides the weight gradient's pixel reduction.

Weights: the kernels read them as [k*k, OC] (each tap's filters contiguous, one vector load per tap):
a taps-major [OC, 1, k, k] weight (``layout.is_taps_major``; the layers allocate theirs so and keep
them so) is read as it is, any other is copied to taps-major per call (one launch). Nothing is cached,
so no write (in place, through ``.data``, ``load_state_dict``) can leave a stale copy behind. The weight
gradient is written in the weight's layout (``layout.grad_strides``), so autograd and DDP take it
without a copy. Strided and
NCHW inputs take the same kernels through explicit strides; vector loads need channels_last (VEC).
Every tensor reaches the kernels as its 16-byte-aligned base (``aligned_base``) and an offset, so that
a channel-offset view (the Ghost module's ``grad[:, C:]`` with C = 4 mod 8) keeps vector loads.

Each launch's plan (grid, integer arguments, constexprs) is memoized on the spec, the tile and the
tensors' shapes, strides and leads (``tensor_layouts``): no tensor and no address is kept.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from math import gcd

import torch

from tritonconv import tiles
from tritonconv._launcher import launch
from tritonconv._layout import empty, empty_like_layout, int32_addressable
from tritonconv.ops.depthwise import kernels
from tritonconv.ops.depthwise.layout import empty_grad, taps_major
from tritonconv.ops.depthwise.spec import ACTIVATIONS, DepthwiseSpec
from tritonconv.tiles import (
    GemmTile,
    KernelTiles,
    TileTable,
    accumulator_dtype,
    cdiv,
    next_power_of_2,
    reduction_splits,
)


def _extent(spec: DepthwiseSpec, kernel: str) -> tuple[int, int, int]:
    """(pixels of one image, channels, unused) the tile is fitted to: a program stays in one image."""
    if kernel == "forward":
        channels = max(spec.out_channels, spec.in_channels) if spec.concat_input else spec.out_channels
        return spec.out_height * spec.out_width, channels, 1
    if kernel == "backward_input":
        return spec.height * spec.width, spec.in_channels, 1
    return spec.out_height * spec.out_width, spec.out_channels, 1


# Tiles of the pixel kernels: block_rows pixels of one image x block_cols channels, no reduction block.
_PIXEL_TILES = (
    GemmTile(64, 64, 16, 4, 2), GemmTile(128, 32, 16, 4, 2), GemmTile(32, 128, 16, 4, 2),
    GemmTile(128, 64, 16, 8, 2), GemmTile(64, 128, 16, 8, 2), GemmTile(256, 32, 16, 8, 2),
    GemmTile(16, 128, 16, 4, 2), GemmTile(32, 64, 16, 2, 2),
)
_PIXEL_BLOCKS = ("BLOCK_P", "BLOCK_C", None)
TILES = TileTable({
    "forward": KernelTiles(GemmTile(64, 64, 16, 4, 2), _PIXEL_TILES, _PIXEL_BLOCKS),
    "backward_input": KernelTiles(GemmTile(64, 64, 16, 4, 2), _PIXEL_TILES, _PIXEL_BLOCKS),
    # The weight gradient's pixel block is what its accumulators allow (``weight_grad_plan``), at most
    # block_rows. fp32/fp64 accumulate beside wider operands: 4 warps spill 1-3 registers (sm_90a fp32
    # audit, 9 of 26 shapes), 8 none.
    "backward_weight": KernelTiles(GemmTile(128, 32, 16, 4, 2), (
        GemmTile(128, 32, 16, 4, 2), GemmTile(64, 64, 16, 4, 2), GemmTile(256, 32, 16, 8, 2),
        GemmTile(128, 64, 16, 8, 2), GemmTile(64, 32, 16, 4, 2, splits=8), GemmTile(128, 32, 16, 4, 2, splits=32),
    ), (None, "BLOCK_C", None), wide_default=GemmTile(128, 32, 16, 8, 2)),
}, _extent)
candidate_tiles = TILES.candidate_tiles


# Channel elements per thread the pixel kernels' default tile keeps where fitting narrows its channels
# (Ghost's 12 or 20 channels: 16 or 32 columns): the rows grow instead, so a tap's filter vector (its
# load, its conversion, its address) still serves several pixels of each thread.
_MIN_ELEMENTS_PER_THREAD = 16


def default_tile(spec: DepthwiseSpec, kernel: str) -> GemmTile:
    tile = TILES.default_tile(spec, kernel)
    if kernel == "backward_weight":
        return tile
    pixels = _extent(spec, kernel)[0]
    rows = _MIN_ELEMENTS_PER_THREAD * 32 * tile.num_warps // tile.block_cols
    return replace(tile, block_rows=max(tile.block_rows, min(rows, next_power_of_2(pixels))))


PLANS_KEPT = 1024  # launch plans memoized per launcher (one per shape, tile and layout)


def _window(spec: DepthwiseSpec, activation: str) -> dict:
    return dict(K=spec.kernel_size, STRIDE=spec.stride, PAD=spec.padding, DIL=spec.dilation,
                ACT=ACTIVATIONS[activation], MULT=spec.multiplier, ACC_DTYPE=accumulator_dtype(spec.torch_dtype))


_POINTER_ALIGNMENT = 16  # bytes: the JIT hints a pointer (divisibility 16) only at this alignment


def _lead(t: torch.Tensor) -> int:
    """Elements from the 16-byte-aligned address at or below ``t``'s first element up to it; 0 when
    that address lies before ``t``'s storage (or falls inside an element)."""
    misaligned = t.data_ptr() % _POINTER_ALIGNMENT
    lead, partial = divmod(misaligned, t.element_size())
    return lead if not partial and lead <= t.storage_offset() else 0


def tensor_layouts(*tensors) -> tuple:
    """Each tensor's (shape, strides, lead): all a launch plan reads of it. The lead (``_lead``, under
    16 bytes of elements) keys the plans, never the address, so one plan serves every allocation."""
    return tuple((t.shape, t.stride(), _lead(t)) for t in tensors)


def vector_width(channels, layouts) -> int:
    """The largest power of two up to 8 (16 bytes of bf16) dividing the channel counts, every tensor's
    batch and pixel strides and its lead (``tensor_layouts``), when every tensor has contiguous channels
    (channels_last); else 1. Those strides and leads reach the kernels divided by it, so the compiler
    knows each pixel's channels start aligned (the JIT's own hint only covers multiples of 16: it misses
    8, 24 or 40 channels, and any pointer that is not 16-byte aligned)."""
    if any(shape[1] > 1 and strides[1] != 1 for shape, strides, _ in layouts):
        return 1
    common = gcd(*channels, *(s for _, (sb, _, sh, sw), lead in layouts for s in (sb, sh, sw, lead)))
    return next(v for v in (8, 4, 2, 1) if common % v == 0)


def operand_strides(layouts, vec: int) -> tuple:
    """The tensors' integer arguments, each tensor's in turn: the batch / vec, channel, height / vec,
    width / vec strides and the lead / vec, which the kernel adds back to the tensor's ``aligned_base``."""
    return tuple(i for _, (sb, sc, sh, sw), lead in layouts for i in (sb // vec, sc, sh // vec, sw // vec, lead // vec))


def aligned_base(t: torch.Tensor, layout) -> torch.Tensor:
    """``t`` from its 16-byte-aligned base: a view of the same storage starting its lead earlier, so its
    pointer argument keeps the JIT's alignment hint."""
    lead = layout[2]
    return t.as_strided(t.shape, t.stride(), t.storage_offset() - lead) if lead else t


def aligned_bases(tensors, layouts) -> tuple:
    """``aligned_base`` of each tensor, with its layout (``tensor_layouts``)."""
    return tuple(aligned_base(t, layout) for t, layout in zip(tensors, layouts))


# ---- launchers --------------------------------------------------------------------------------------

# Each launcher's plan (grid, the kernel's integer arguments and constexprs) is a pure function of the
# spec, the tile and the tensors' layouts (``tensor_layouts``): memoized, so a repeated call only
# allocates, takes the aligned bases and launches. The device's SM count, which may change between
# calls (the perf audit's), is read per call and keys the weight-gradient plan.

@functools.lru_cache(maxsize=PLANS_KEPT)
def _forward_plan(spec: DepthwiseSpec, tile: GemmTile, layouts, has_bias: bool):
    """(grid, integer arguments, constexprs) of ``depthwise_fwd_kernel`` for the layouts of x, the maps
    and the input's copy."""
    vec = vector_width((spec.in_channels, spec.out_channels), layouts)
    channels = max(spec.out_channels, spec.in_channels) if spec.concat_input else spec.out_channels
    grid = (cdiv(spec.out_height * spec.out_width, tile.block_rows), cdiv(channels, tile.block_cols),
            spec.batch)
    integers = (spec.in_channels // vec, spec.height, spec.width, spec.out_channels // vec, spec.out_height,
                spec.out_width, *operand_strides(layouts, vec))
    constexprs = dict(**_window(spec, spec.activation), HAS_BIAS=has_bias, COPY_INPUT=spec.concat_input, VEC=vec,
                      **TILES["forward"].launch_args(tile))
    return grid, integers, constexprs


def forward(x, weight, bias, spec: DepthwiseSpec, tile: GemmTile) -> torch.Tensor:
    """The op's output: depthwise maps, or ``cat([x, maps])`` written by the same launch (concat_input)."""
    out = empty_like_layout(spec.output_shape, x)
    if out.numel() == 0:
        return out
    # A channel-offset view: the kernel writes the maps straight into their place in ``out``.
    y = out[:, spec.in_channels:] if spec.concat_input else out
    copy = out[:, :spec.in_channels] if spec.concat_input else out
    tensors = (int32_addressable(x), y, copy)
    layouts = tensor_layouts(*tensors)
    grid, integers, constexprs = _forward_plan(spec, tile, layouts, bias is not None)
    x_, y_, copy_ = aligned_bases(tensors, layouts)
    launch(kernels.depthwise_fwd_kernel, grid,
           (x_, taps_major(weight), bias.contiguous() if bias is not None else None, y_, copy_), integers, constexprs)
    return out


@functools.lru_cache(maxsize=PLANS_KEPT)
def _mask_plan(spec: DepthwiseSpec, tile: GemmTile, layouts, activation: str):
    """(grid, integer arguments, constexprs) of ``depthwise_grad_mask_kernel`` for the layouts of dy, y, dz."""
    vec = vector_width((spec.out_channels,), layouts)
    grid = (cdiv(spec.out_height * spec.out_width, tile.block_rows), cdiv(spec.out_channels,
            tile.block_cols), spec.batch)
    integers = (spec.out_channels // vec, spec.out_height, spec.out_width, *operand_strides(layouts, vec))
    constexprs = dict(ACT=ACTIVATIONS[activation], VEC=vec, BLOCK_P=tile.block_rows, BLOCK_C=tile.block_cols,
                      num_warps=tile.num_warps)
    return grid, integers, constexprs


def masked_gradient(dy, y, spec: DepthwiseSpec, tile: GemmTile, like: torch.Tensor,
                    activation: str | None = None) -> torch.Tensor:
    """dz = dy where the activation passes (decided from its output ``y``), else 0: [B, OC, Ho, Wo] in
    dy's dtype (exact: a select), laid out like ``like``."""
    activation = spec.activation if activation is None else activation
    dz = empty_like_layout((spec.batch, spec.out_channels, spec.out_height, spec.out_width), like, dtype=dy.dtype)
    if dz.numel() == 0:
        return dz
    tensors = (int32_addressable(dy), int32_addressable(y), dz)
    layouts = tensor_layouts(*tensors)
    grid, integers, constexprs = _mask_plan(spec, tile, layouts, activation)
    launch(kernels.depthwise_grad_mask_kernel, grid, aligned_bases(tensors, layouts), integers, constexprs)
    return dz


@functools.lru_cache(maxsize=PLANS_KEPT)
def _backward_input_plan(spec: DepthwiseSpec, tile: GemmTile, layouts, has_add: bool):
    """(grid, integer arguments, constexprs) of ``depthwise_bwd_input_kernel`` for the layouts of dz, the
    addend and dx."""
    vec = vector_width((spec.in_channels, spec.out_channels), layouts)
    grid = (cdiv(spec.height * spec.width, tile.block_rows), cdiv(spec.in_channels, tile.block_cols),
            spec.batch)
    integers = (spec.in_channels // vec, spec.height, spec.width, spec.out_channels // vec, spec.out_height,
                spec.out_width, *operand_strides(layouts, vec))
    constexprs = dict(K=spec.kernel_size, STRIDE=spec.stride, PAD=spec.padding, DIL=spec.dilation,
                      MULT=spec.multiplier, ACC_DTYPE=accumulator_dtype(spec.torch_dtype), HAS_ADD=has_add, VEC=vec,
                      **TILES["backward_input"].launch_args(tile))
    return grid, integers, constexprs


def backward_input(dy, y, weight, spec: DepthwiseSpec, tile: GemmTile, like: torch.Tensor,
                   activation: str | None = None, add: torch.Tensor | None = None) -> torch.Tensor:
    """dx from the maps' gradient ``dy`` ([B, OC, Ho, Wo], any float dtype; it may be ``y`` itself
    when there is no activation); ``y`` (the maps) masks it through the activation, first, once per
    element (``masked_gradient``, one more launch); ``add`` is added to dx (a gradient reaching x
    directly)."""
    activation = spec.activation if activation is None else activation
    dx = empty_like_layout(spec.input_shape, like)
    if dx.numel() == 0:
        return dx
    dz = masked_gradient(dy, y, spec, tile, like, activation) if ACTIVATIONS[activation] else dy
    tensors = (int32_addressable(dz), int32_addressable(add) if add is not None else dx, dx)
    layouts = tensor_layouts(*tensors)
    grid, integers, constexprs = _backward_input_plan(spec, tile, layouts, add is not None)
    dz_, a_, dx_ = aligned_bases(tensors, layouts)
    launch(kernels.depthwise_bwd_input_kernel, grid, (dz_, taps_major(weight), a_, dx_), integers, constexprs)
    return dx


# Live taps (kernel rows x k) one weight-gradient program accumulates: the rest of the rows go to
# other programs. 9 covers k=3 whole; k=5 takes 2 rows, k=7 one.
_TAPS_PER_PROGRAM = 12
# fp32 accumulator registers per thread the weight-gradient tile may take (taps x its pixel-channel share).
_ACCUMULATOR_REGISTERS = 96


def _weight_grad_rows(kernel_size: int) -> int:
    return max(1, min(kernel_size, _TAPS_PER_PROGRAM // kernel_size))


@dataclass(frozen=True)
class WeightGradPlan:
    """How the weight-gradient kernel covers a layer: programs (channel tiles x row groups, image
    splits, pixel splits) and the partials' shape [splits, partial_rows, OC]."""

    rows: int  # kernel rows per program
    row_groups: int
    taps: int  # rows * k rounded up to a power of two
    partial_rows: int  # k*k taps, then the bias
    block_p: int
    block_c: int
    channel_tiles: int
    image_splits: int
    images_per_split: int
    pixel_splits: int
    pixels_per_split: int

    @property
    def grid(self) -> tuple[int, int, int]:
        return (self.channel_tiles * self.row_groups, self.image_splits, self.pixel_splits)

    @property
    def splits(self) -> int:
        return self.image_splits * self.pixel_splits


def weight_grad_plan(spec: DepthwiseSpec, tile: GemmTile, has_bias: bool, device) -> WeightGradPlan:
    """The weight-gradient launch's plan: the pixel block the accumulators allow (``_ACCUMULATOR_REGISTERS``),
    the splits ``reduction_splits`` asks for, whole images first, then ranges of each image's pixels."""
    k = spec.kernel_size
    image_pixels = spec.out_height * spec.out_width
    rows = _weight_grad_rows(k)
    block_c = tile.block_cols
    threads = 32 * tile.num_warps
    fitting = max(1, _ACCUMULATOR_REGISTERS * threads // (rows * k * block_c))
    block_p = max(1, min(tile.block_rows, 1 << (fitting.bit_length() - 1)))
    channel_tiles = cdiv(spec.out_channels, block_c)
    row_groups = cdiv(k, rows)
    splits = reduction_splits(GemmTile(block_p, block_c, block_p, splits=tile.splits), channel_tiles * row_groups,
                              spec.batch * image_pixels, device)
    image_splits = min(splits, spec.batch)
    images_per_split = cdiv(spec.batch, image_splits)
    image_splits = cdiv(spec.batch, images_per_split)
    pixel_splits = max(1, min(cdiv(splits, image_splits), cdiv(image_pixels, block_p)))
    pixels_per_split = cdiv(cdiv(image_pixels, pixel_splits), block_p) * block_p
    pixel_splits = cdiv(image_pixels, pixels_per_split)
    return WeightGradPlan(rows, row_groups, next_power_of_2(rows * k), k * k + int(has_bias), block_p, block_c,
                          channel_tiles, image_splits, images_per_split, pixel_splits, pixels_per_split)


def weight_grad_arguments(spec: DepthwiseSpec, plan: WeightGradPlan) -> tuple:
    """The weight-gradient kernel's split arguments (after the shapes): images per split, the batch, pixels
    per split and the pixel walk's step divmod(BLOCK_P, Wo) as (WO_STEP, HO_STEP)."""
    return (plan.images_per_split, spec.batch, plan.pixels_per_split, plan.block_p % spec.out_width,
            plan.block_p // spec.out_width)


@functools.lru_cache(maxsize=PLANS_KEPT)
def _backward_weight_plan(spec: DepthwiseSpec, tile: GemmTile, layouts, activation: str, has_bias: bool,
                          write_dz: bool, device: torch.device, multiprocessors: int):
    """The weight gradient's two launches: (``WeightGradPlan``, (grid, integer arguments, constexprs) of
    the partials kernel, (grid, leading integer arguments, constexprs) of the reduction) for the layouts
    of x, dy, y, dz. ``multiprocessors``, the device's SM count the splits follow, only keys the memo."""
    vec = vector_width((spec.in_channels, spec.out_channels), layouts)
    plan = weight_grad_plan(spec, tile, has_bias, device)
    common = dict(K=spec.kernel_size, HAS_BIAS=has_bias, ACC_DTYPE=accumulator_dtype(spec.torch_dtype), VEC=vec,
                  PARTIAL_ROWS=plan.partial_rows)
    integers = (spec.in_channels // vec, spec.height, spec.width, spec.out_channels // vec, spec.out_height,
                spec.out_width, *weight_grad_arguments(spec, plan), *operand_strides(layouts, vec))
    constexprs = dict(STRIDE=spec.stride, PAD=spec.padding, DIL=spec.dilation, ACT=ACTIVATIONS[activation],
                      MULT=spec.multiplier, WRITE_DZ=write_dz, ROWS=plan.rows, TAPS=plan.taps, **common,
                      BLOCK_P=plan.block_p, BLOCK_C=plan.block_c, num_warps=tile.num_warps,
                      num_stages=tile.num_stages)
    reduce_constexprs = dict(**common, ROWS_P=next_power_of_2(plan.partial_rows), BLOCK_C=plan.block_c, num_warps=4)
    return (plan, (plan.grid, integers, constexprs),
            ((plan.channel_tiles,), (plan.splits, spec.out_channels // vec), reduce_constexprs))


def backward_weight(dy, y, x, spec: DepthwiseSpec, tile: GemmTile, activation: str | None = None,
                    has_bias: bool | None = None, grad_out: torch.Tensor | None = None,
                    weight: torch.Tensor | None = None):
    """(grad weight [OC, 1, K, K], grad bias [OC] or None), reduced over pixels in fp32 (fp64). ``dy``
    may be any float dtype and may be ``y`` itself when there is no activation.

    Two launches: the partials of every tap (and the bias) per split of the pixels, then their reduction
    in split order, written in the parameters' dtype, grad weight with ``layout.grad_strides(weight)``
    (the weight's own strides; taps-major without ``weight``). ``grad_out`` (with an activation): a
    [B, OC, Ho, Wo] tensor the first launch also writes dz (dy masked by the activation) into, for
    ``backward_input`` to read instead of masking again.
    """
    activation = spec.activation if activation is None else activation
    has_bias = spec.bias if has_bias is None else has_bias
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    if spec.batch * spec.out_height * spec.out_width == 0:
        return (empty_grad(weight, spec.weight_shape, device=x.device, dtype=x.dtype).zero_(),
                torch.zeros(spec.out_channels, device=x.device, dtype=x.dtype) if has_bias else None)
    write_dz = grad_out is not None and bool(ACTIVATIONS[activation])
    x, dy = int32_addressable(x), int32_addressable(dy)
    y = int32_addressable(y) if ACTIVATIONS[activation] else dy
    dz = grad_out if write_dz else dy
    tensors = (x, dy, y, dz)
    layouts = tensor_layouts(*tensors)
    plan, (grid, integers, constexprs), (reduce_grid, reduce_integers, reduce_constexprs) = _backward_weight_plan(
        spec, tile, layouts, activation, has_bias, write_dz, x.device, tiles.multiprocessor_count(x.device))
    partial = empty((plan.splits, plan.partial_rows, spec.out_channels), device=x.device, dtype=acc_dtype)
    launch(kernels.depthwise_bwd_weight_kernel, grid, (*aligned_bases(tensors, layouts), partial), integers,
           constexprs)
    grad_w = empty_grad(weight, spec.weight_shape, device=x.device, dtype=x.dtype)
    sdw_o, _, _, sdw_tap = grad_w.stride()  # layout.grad_strides(weight)
    grad_b = empty((spec.out_channels,), device=x.device, dtype=x.dtype) if has_bias else None
    launch(kernels.depthwise_reduce_weight_kernel, reduce_grid,
           (partial, grad_w, grad_b if grad_b is not None else grad_w), (*reduce_integers, sdw_o, sdw_tap),
           reduce_constexprs)
    return grad_w, grad_b
