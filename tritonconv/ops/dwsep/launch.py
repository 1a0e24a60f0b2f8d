"""Host side of the fused depthwise-separable kernels: allocation, grids, tiles, their candidates and
the filter plan (how many output filters one program owns).

Tile roles per kernel (rows x cols, reducing ``block_reduce`` at a time):

| kernel | rows | cols | reduce |
|---|---|---|---|
| forward | output pixels | a filter chunk of N | channels C |
| backward_pointwise | output pixels | channels C | a filter chunk of N (the weight gradient's dot rows) |
| backward_input, backward_weight | the depthwise kernels' tiles (see ``depthwise.launch``) | | |

The filter plan (``filter_plan``): a program keeps one fp32 accumulator per filter chunk it owns
(forward [pixels, chunk], backward [chunk, channels]), up to ``kernels.MAX_CHUNKS`` and the registers
per thread ``_accumulator_registers`` allows. Owning every chunk computes each depthwise tile once; when N
needs more, the filter groups each recompute it (k*k FFMAs per element and another read of the x
window, mostly from L2) rather than spill accumulators. ``explain()`` reports the plan.

Forward: one launch. Backward, per training step, three: ``dwsep_bwd_kernel`` (dz in the input dtype
and the pointwise gradients' split-K partials, one read of dy), ``dwsep_bwd_depthwise_kernel`` (grad
input and the depthwise gradients' partials from dz, in one grid) and ``dwsep_reduce_kernel`` (every
partial, in split order). Both kernels read dw_weight taps-major in its own dtype (the layer's layout,
``depthwise.layout``): no copy for the layer's weight, one per call for any other. Each launch's plan
(grid, integer arguments, constexprs) is memoized on the spec, the tiles and the tensors' layouts.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import torch

from tritonconv import tiles
from tritonconv._launcher import launch
from tritonconv._layout import empty, empty_like_layout, int32_addressable
from tritonconv.ops.depthwise import launch as depthwise_launch
from tritonconv.ops.depthwise.launch import aligned_bases, operand_strides, tensor_layouts, vector_width
from tritonconv.ops.depthwise.layout import empty_grad, grad_strides, taps_major
from tritonconv.ops.depthwise.spec import ACTIVATIONS
from tritonconv.ops.dwsep import kernels
from tritonconv.ops.dwsep.spec import DwSepSpec
from tritonconv.tiles import (
    GemmTile,
    KernelTiles,
    TileTable,
    accumulator_dtype,
    cdiv,
    next_power_of_2,
    precision,
    reduction_splits,
)

_WGMMA_ROWS = 64  # wgmma's M: a dot with fewer rows falls back to mma.sync
# Accumulator registers per thread a program may hold (of 255) with bf16/fp16 operands, leaving room for
# the depthwise tile, the dot operands and the addresses. Read from the sm_90a audit at k = 3, 5, 7:
# ptxas spills past them (the forward at 4 accumulators of 32 at k = 7; the backward, which also holds
# dh, h and dy', at 3 of 16 at k = 5 and 2 of 16 at k = 7: a row's unrolled taps keep their loads and
# weights in registers).
_FORWARD_REGISTERS = 96
_BACKWARD_REGISTERS = {3: 64, 5: 32, 7: 16}  # by kernel size
# H100 bf16 tensor-core MACs per fp32 FFMA (989 vs 67 TFLOP/s dense, datasheet): a recomputed depthwise
# MAC costs about this many pointwise ones. So filter groups are only for what registers cannot hold,
# not to fill idle SMs (a 7 x 7 layer's 98 pixel tiles): the recomputation would cost more than it fills.
_TENSOR_CORE_SPEEDUP = 15
_MAX_GRID_YZ = 65535  # CUDA's limit on grid axes 1 and 2
_INT32 = 2**31
PLANS_KEPT = 1024  # launch plans memoized per launcher (one per shape, tile and layout)


def _extent(spec: DwSepSpec, kernel: str) -> tuple[int, int, int]:
    pixels = spec.batch * spec.out_height * spec.out_width
    return {"forward": (pixels, spec.out_channels, spec.in_channels),
            "backward_pointwise": (pixels, spec.in_channels, spec.out_channels)}[kernel]


# The pointwise GEMMs' tiles; the depthwise backward kernels take depthwise's (``default_tile``). Fitted
# to the layer with their dots' rows kept at wgmma's 64 (forward: pixels; backward: pixels and the
# filter chunk, the weight gradient's rows): masked rows cost tensor-core time only.
TILES = TileTable({
    "forward": KernelTiles(GemmTile(64, 64, 32, 4, 2), (
        GemmTile(64, 64, 32, 4, 2), GemmTile(64, 128, 32, 4, 2), GemmTile(128, 64, 32, 8, 2),
        GemmTile(64, 64, 64, 4, 2), GemmTile(64, 128, 32, 8, 2), GemmTile(128, 128, 32, 8, 2),
        GemmTile(64, 256, 32, 8, 2), GemmTile(64, 64, 16, 4, 2),
    ), ("BLOCK_P", "BLOCK_N", "BLOCK_C"), min_rows=_WGMMA_ROWS),
    # fp32 / fp64 operands beside the accumulators spill at 4 warps
    "backward_pointwise": KernelTiles(GemmTile(64, 64, 64, 4, 2), (
        GemmTile(64, 64, 64, 4, 2), GemmTile(64, 32, 64, 4, 2), GemmTile(128, 64, 64, 8, 2),
        GemmTile(64, 64, 128, 8, 2), GemmTile(64, 128, 64, 8, 2), GemmTile(128, 32, 64, 4, 2),
    ), ("BLOCK_P", "BLOCK_C", "BLOCK_N"), min_rows=_WGMMA_ROWS, min_reduce=_WGMMA_ROWS,
        wide_default=GemmTile(64, 64, 64, 8, 2)),
}, _extent)
# Each default's alternative on twice the threads, holding more filters per program: taken where its
# filter plan recomputes the depthwise tile fewer times than the default's does.
_WIDER = {"forward": GemmTile(64, 128, 32, 8, 2), "backward_pointwise": GemmTile(64, 64, 64, 8, 2)}


def _launched_as(tile: GemmTile, spec: DwSepSpec, kernel: str) -> GemmTile:
    """The grad-input tile as the combined depthwise launch runs it: that launch takes the grad-weight
    tile's warps and stages, so the grad-input tile's own are set to them (tuning them would time one
    launch several times)."""
    if kernel != "backward_input":
        return tile
    weight_tile = depthwise_launch.default_tile(spec.depthwise(), "backward_weight")
    return replace(tile, num_warps=weight_tile.num_warps, num_stages=weight_tile.num_stages)


def default_tile(spec: DwSepSpec, kernel: str) -> GemmTile:
    if kernel in ("backward_input", "backward_weight"):
        return _launched_as(depthwise_launch.default_tile(spec.depthwise(), kernel), spec, kernel)
    table = TILES[kernel]
    preferred = table.default_for(spec.dtype)
    choices = [preferred, *(tile for tile in (table.default, _WIDER[kernel]) if tile != preferred)]
    tiles = [TILES.fitted(tile, spec, kernel) for tile in choices]
    return min(tiles, key=lambda tile: filter_plan(spec, kernel, tile).groups)


def candidate_tiles(spec: DwSepSpec, kernel: str) -> list[GemmTile]:
    if kernel in ("backward_input", "backward_weight"):
        return list(dict.fromkeys(_launched_as(tile, spec, kernel)
                                  for tile in depthwise_launch.candidate_tiles(spec.depthwise(), kernel)))
    return TILES.candidate_tiles(spec, kernel)


@dataclass(frozen=True)
class FilterPlan:
    """How a kernel covers the N filters: ``chunks`` chunks of ``block_n``, ``per_program`` of them in
    each of ``groups`` programs per pixel tile (forward) or channel chunk (backward)."""

    kernel: str
    filters: int
    block_n: int
    chunks: int
    per_program: int
    groups: int
    taps: int  # k*k: the depthwise MACs per intermediate element
    x_bytes: int  # one read of the input

    def describe(self) -> str:
        head = (f"{self.kernel}: N={self.filters} as {self.chunks} filter chunk(s) of {self.block_n}, "
                f"{self.per_program} per program")
        if self.groups == 1:
            return head + ": each depthwise tile computed once for every filter"
        extra = self.groups - 1
        share = extra * self.taps * _TENSOR_CORE_SPEEDUP / self.filters
        return (head + f" (the accumulators that fit in registers, at most {kernels.MAX_CHUNKS}): "
                f"{self.groups} filter groups each recompute the depthwise tile: {extra} x {self.taps} FFMAs per "
                f"element, about {share:.0%} of the pointwise's tensor-core time, and {extra} more read(s) of x "
                f"({extra * self.x_bytes / 2**20:.1f} MiB, mostly from L2)")


def _accumulator_registers(spec: DwSepSpec, kernel: str) -> int:
    """Accumulator registers per thread: the backward holds dy', h and dy'^T beside its accumulators,
    and fp32 / fp64 operands (tf32 dots) take two / four times a bf16 one's registers, so fewer fit
    (the forward, with fewer operands, gives up a third for fp32 and fp64)."""
    if kernel == "forward":  # fp32 tiles of x and h (tf32 dots) spill beside 3 accumulators at k = 5
        return _FORWARD_REGISTERS * 2 // min(3, max(2, spec.torch_dtype.itemsize))
    budget = _BACKWARD_REGISTERS.get(spec.kernel_size, min(_BACKWARD_REGISTERS.values()))
    return budget * 2 // max(2, spec.torch_dtype.itemsize)


@functools.lru_cache(maxsize=4096)  # pure, and asked at every call
def filter_plan(spec: DwSepSpec, kernel: str, tile: GemmTile, one_group: bool = False) -> FilterPlan:
    """Chunks per program: as many accumulators as ``_accumulator_registers`` allows (up to MAX_CHUNKS);
    the filter groups then split the chunks evenly. ``one_group``: a single group that owns what it can
    (the backward without weight gradients, whose group 0 reads the other chunks for dz)."""
    if kernel == "forward":
        block_n, other = tile.block_cols, tile.block_rows
    else:
        block_n, other = tile.block_reduce, tile.block_cols
    chunks = cdiv(spec.out_channels, block_n)
    per_chunk = cdiv(block_n * other, 32 * tile.num_warps)
    most = max(1, min(kernels.MAX_CHUNKS, _accumulator_registers(spec, kernel) // per_chunk))
    x_bytes = spec.batch * spec.in_channels * spec.height * spec.width * spec.torch_dtype.itemsize
    if one_group:
        return FilterPlan(kernel, spec.out_channels, block_n, chunks, min(chunks, most), 1, spec.kernel_size**2,
                          x_bytes)
    groups = cdiv(chunks, most)
    per_program = cdiv(chunks, groups)
    return FilterPlan(kernel, spec.out_channels, block_n, chunks, per_program, cdiv(chunks, per_program),
                      spec.kernel_size**2, x_bytes)


def describe_plans(spec: DwSepSpec, pass_: str, tiles: dict) -> str:
    """The filter plan of the pass's fused kernel, for ``explain()``."""
    kernel = "forward" if pass_ == "forward" else "backward_pointwise"
    return filter_plan(spec, kernel, tiles[kernel]).describe() if kernel in tiles else ""


def _window(spec: DwSepSpec) -> dict:
    return dict(K=spec.kernel_size, STRIDE=spec.stride, PAD=spec.padding, DIL=spec.dilation,
                ACT=ACTIVATIONS[spec.activation], OUT_ACT=ACTIVATIONS[spec.out_activation],
                HAS_DW_BIAS=spec.dw_bias)


def _bias(bias):
    """A bias as the kernels read it; None (a constexpr: the HAS_*_BIAS flags skip it) when absent."""
    return bias.contiguous() if bias is not None else None


# ---- launchers --------------------------------------------------------------------------------------

# Each launcher's plan (grid, the kernel's integer arguments and constexprs) is a pure function of the
# spec, the tiles and the tensors' layouts (``depthwise.launch.tensor_layouts``): memoized, so a repeated
# call only allocates, takes the aligned bases and launches. Switches that may change between calls
# (tf32, the interpreter: ``_precision``; the device's SM count, which keys the split plans) are read
# per call.

@functools.lru_cache(maxsize=PLANS_KEPT)
def _forward_plan(spec: DwSepSpec, tile: GemmTile, layouts, has_pw_bias: bool):
    """(grid, integer arguments, constexprs) of ``dwsep_fwd_kernel`` for the layouts of x and y."""
    vec = vector_width((spec.in_channels, spec.out_channels), layouts)
    plan = filter_plan(spec, "forward", tile)
    pixels = spec.batch * spec.out_height * spec.out_width
    integers = (pixels, spec.in_channels // vec, spec.height, spec.width, spec.out_channels // vec,
                spec.out_height, spec.out_width, *operand_strides(layouts, vec))
    constexprs = dict(**_window(spec), HAS_PW_BIAS=has_pw_bias, VEC=vec, CHUNKS=plan.per_program,
                      **TILES["forward"].launch_args(tile))
    return (cdiv(pixels, tile.block_rows), plan.groups), integers, constexprs


def forward(x, dw_weight, dw_bias, pw_weight, pw_bias, spec: DwSepSpec, tile: GemmTile) -> torch.Tensor:
    y = empty_like_layout(spec.output_shape, x)
    if y.numel() == 0:
        return y
    x = int32_addressable(x)
    layouts = tensor_layouts(x, y)
    grid, integers, constexprs = _forward_plan(spec, tile, layouts, pw_bias is not None)
    weight_t = taps_major(dw_weight)  # the layer's own weight as it is; a copy for any other layout
    x_, y_ = aligned_bases((x, y), layouts)
    launch(kernels.dwsep_fwd_kernel, grid, (x_, weight_t, _bias(dw_bias), pw_weight.contiguous(), _bias(pw_bias), y_),
           integers, {**constexprs, **precision(x.dtype)})
    return y


@dataclass(frozen=True)
class _PointwisePartials:
    """Split-K partials of grad pw_weight [splits, N, C] and pw_bias [splits, N] (or None)."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    splits: int


@dataclass(frozen=True)
class _DepthwisePartials:
    """Split-K partials of grad dw_weight and dw_bias [splits, k*k (+1), C], and their plan."""

    partial: torch.Tensor
    plan: depthwise_launch.WeightGradPlan
    vec: int


@functools.lru_cache(maxsize=PLANS_KEPT)
def _pointwise_plan(spec: DwSepSpec, tile: GemmTile, layouts, need_weights: bool, has_pw_bias: bool,
                    device: torch.device, multiprocessors: int):
    """(splits, grid, integer arguments, constexprs) of ``dwsep_bwd_kernel`` for the layouts of x, dy, y,
    dz. ``multiprocessors``, the device's SM count the splits follow, only keys the memo."""
    vec = vector_width((spec.in_channels, spec.out_channels), layouts)
    pixels = spec.batch * spec.out_height * spec.out_width
    plan = filter_plan(spec, "backward_pointwise", tile, one_group=not need_weights)
    channel_tiles = cdiv(spec.in_channels, tile.block_cols)
    splits = min(_MAX_GRID_YZ, reduction_splits(GemmTile(tile.block_rows, tile.block_cols, tile.block_rows,
                                                         splits=tile.splits),
                                                channel_tiles * plan.groups, pixels, device))
    pixels_per_split = cdiv(cdiv(pixels, splits), tile.block_rows) * tile.block_rows
    splits = cdiv(pixels, pixels_per_split)
    integers = (pixels, pixels_per_split, spec.in_channels // vec, spec.height, spec.width,
                spec.out_channels // vec, spec.out_height, spec.out_width, *operand_strides(layouts, vec))
    constexprs = dict(**_window(spec), HAS_PW_BIAS=has_pw_bias, WEIGHT_GRADS=need_weights,
                      ALL_FILTERS=plan.per_program * plan.block_n >= spec.out_channels, VEC=vec,
                      CHUNKS=plan.per_program, **TILES["backward_pointwise"].launch_args(tile))
    return splits, (channel_tiles, plan.groups, splits), integers, constexprs


def _pointwise_pass(dy, y, x, weight_t, dw_bias, pw_weight, spec: DwSepSpec, tile: GemmTile, need_weights: bool):
    """dz (one launch) and, with ``need_weights``, the pointwise gradients' partials (else None);
    ``weight_t``: dw_weight taps-major (``depthwise.layout.taps_major``)."""
    dz = empty_like_layout((spec.batch, spec.in_channels, spec.out_height, spec.out_width), x)
    has_pw_bias = need_weights and spec.pw_bias
    if spec.batch * spec.out_height * spec.out_width == 0:
        return dz, None
    x, dy = int32_addressable(x), int32_addressable(dy)
    tensors = (x, dy, int32_addressable(y) if ACTIVATIONS[spec.out_activation] else dy, dz)
    layouts = tensor_layouts(*tensors)
    splits, grid, integers, constexprs = _pointwise_plan(spec, tile, layouts, need_weights, has_pw_bias, x.device,
                                                         tiles.multiprocessor_count(x.device))
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    if need_weights:
        partial = empty((splits, spec.out_channels, spec.in_channels), device=x.device, dtype=acc_dtype)
        partial_bias = empty((splits, spec.out_channels), device=x.device, dtype=acc_dtype) if has_pw_bias else partial
    else:
        partial = partial_bias = dz
    x_, dy_, y_, dz_ = aligned_bases(tensors, layouts)
    launch(kernels.dwsep_bwd_kernel, grid,
           (x_, weight_t, _bias(dw_bias), pw_weight.contiguous(), dy_, y_, dz_, partial, partial_bias), integers,
           {**constexprs, **precision(x.dtype)})
    if not need_weights:
        return dz, None
    return dz, _PointwisePartials(partial, partial_bias if has_pw_bias else None, splits)


@functools.lru_cache(maxsize=PLANS_KEPT)
def _depthwise_plan(spec: DwSepSpec, input_tile: GemmTile, weight_tile: GemmTile, layouts, need_input: bool,
                    need_weights: bool, device: torch.device, multiprocessors: int):
    """(vec, the grad-weight programs' ``WeightGradPlan``, grid, integer arguments, constexprs) of
    ``dwsep_bwd_depthwise_kernel`` for the layouts of dz, x and dx (x without grad input).
    ``multiprocessors``, the device's SM count the splits follow, only keys the memo."""
    vec = vector_width((spec.in_channels,), layouts)
    depthwise = spec.depthwise()
    plan = depthwise_launch.weight_grad_plan(depthwise, weight_tile, spec.dw_bias, device)
    weight_programs = plan.channel_tiles * plan.row_groups * plan.splits if need_weights else 0
    # Without grad-weight programs their arguments are never read (and Wo may be 0).
    weight_arguments = depthwise_launch.weight_grad_arguments(depthwise, plan) if need_weights else (0,) * 5
    pixel_tiles = cdiv(spec.height * spec.width, input_tile.block_rows)
    channel_tiles = cdiv(spec.in_channels, input_tile.block_cols)
    input_programs = pixel_tiles * channel_tiles * spec.batch if need_input else 0
    if weight_programs + input_programs >= _INT32:
        raise ValueError(f"{spec.describe()}: {weight_programs + input_programs} programs exceed the grid's 2^31")
    integers = (spec.in_channels // vec, spec.height, spec.width, spec.out_height, spec.out_width,
                weight_programs, plan.image_splits, plan.pixel_splits, *weight_arguments,
                pixel_tiles, channel_tiles, *operand_strides(layouts, vec))
    constexprs = dict(K=spec.kernel_size, STRIDE=spec.stride, PAD=spec.padding, DIL=spec.dilation,
                      INPUT_GRAD=need_input, WEIGHT_GRADS=need_weights, HAS_DW_BIAS=spec.dw_bias, VEC=vec,
                      ROWS=plan.rows, TAPS=plan.taps, PARTIAL_ROWS=plan.partial_rows,
                      WEIGHT_BLOCK_P=plan.block_p, WEIGHT_BLOCK_C=plan.block_c,
                      INPUT_BLOCK_P=input_tile.block_rows, INPUT_BLOCK_C=input_tile.block_cols,
                      num_warps=weight_tile.num_warps, num_stages=weight_tile.num_stages)
    return vec, plan, (weight_programs + input_programs,), integers, constexprs


def backward_depthwise(dz, x, weight_t, spec: DwSepSpec, input_tile: GemmTile, weight_tile: GemmTile,
                       need_input: bool, need_weights: bool):
    """(dx or None, the depthwise gradients' partials or None) from dz, in one launch
    (``kernels.dwsep_bwd_depthwise_kernel``): the grad-weight programs take ``weight_tile``'s plan
    (``depthwise.launch.weight_grad_plan``), the grad-input programs ``input_tile``'s pixels and
    channels; both run at ``weight_tile``'s warps and stages (one launch has one). ``weight_t``:
    dw_weight taps-major (``depthwise.layout.taps_major``; only grad input reads it).

    The price of the launch saved: one kernel has one register count, so the grad-input programs run at
    the grad-weight programs' (sm_90a audit, MobileNetV2 / GhostNet / EfficientNet-B0 bf16: 160-202
    registers, 8-12 warps per SM, against 42-166 for grad input alone); the GPU benchmark judges it."""
    dx = empty_like_layout(spec.input_shape, x) if need_input else None
    need_input = need_input and dx.numel() > 0
    need_weights = need_weights and dz.numel() > 0
    if not (need_input or need_weights):
        return dx, None
    x = int32_addressable(x)  # after dx is allocated in x's own layout
    tensors = (dz, x, dx if dx is not None else x)
    layouts = tensor_layouts(*tensors)
    vec, plan, grid, integers, constexprs = _depthwise_plan(spec, input_tile, weight_tile, layouts, need_input,
                                                            need_weights, x.device,
                                                            tiles.multiprocessor_count(x.device))
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    partial = (empty((plan.splits, plan.partial_rows, spec.in_channels), device=x.device, dtype=acc_dtype)
               if need_weights else dz)
    dz_, x_, out_ = aligned_bases(tensors, layouts)
    launch(kernels.dwsep_bwd_depthwise_kernel, grid, (dz_, x_, weight_t, out_, partial), integers,
           {**constexprs, "ACC_DTYPE": accumulator_dtype(x.dtype)})
    return dx, _DepthwisePartials(partial, plan, vec) if need_weights else None


_REDUCE_BLOCK = 1024  # pointwise partials summed per program


@functools.lru_cache(maxsize=PLANS_KEPT)
def _reduce_plan(spec: DwSepSpec, pointwise_splits: int | None, pointwise_bias: bool,
                 depthwise_plan: depthwise_launch.WeightGradPlan | None, vec: int):
    """(grid, the pointwise integer arguments, the leading depthwise ones, constexprs) of
    ``dwsep_reduce_kernel``; None when there is nothing to reduce. ``pointwise_splits`` and
    ``depthwise_plan`` are None for absent partials."""
    weights = spec.out_channels * spec.in_channels
    pw_programs = (cdiv(weights, _REDUCE_BLOCK) + (cdiv(spec.out_channels, _REDUCE_BLOCK) if pointwise_bias else 0)
                   if pointwise_splits is not None else 0)
    dw_programs = depthwise_plan.channel_tiles if depthwise_plan is not None else 0
    if pw_programs + dw_programs == 0:
        return None
    dw_rows = depthwise_plan.partial_rows if depthwise_plan is not None else 1
    pw_integers = (pointwise_splits if pointwise_splits is not None else 0, weights, spec.out_channels, pw_programs)
    dw_integers = (depthwise_plan.splits if depthwise_plan is not None else 0, spec.in_channels // vec)
    constexprs = dict(PW_GRADS=pointwise_splits is not None, HAS_PW_BIAS=pointwise_bias,
                      DW_GRADS=depthwise_plan is not None, K=spec.kernel_size,
                      HAS_DW_BIAS=depthwise_plan is not None and spec.dw_bias, VEC=vec, DW_ROWS=dw_rows,
                      DW_ROWS_P=next_power_of_2(dw_rows), BLOCK=_REDUCE_BLOCK,
                      BLOCK_C=depthwise_plan.block_c if depthwise_plan is not None else 32, num_warps=4)
    return (pw_programs + dw_programs,), pw_integers, dw_integers, constexprs


def reduce_partials(x, dw_weight, spec: DwSepSpec, pointwise: _PointwisePartials | None,
                    depthwise: _DepthwisePartials | None):
    """(grad dw_weight, grad dw_bias, grad pw_weight, grad pw_bias) from the partials, in one launch
    (``kernels.dwsep_reduce_kernel``); those whose partials are None come back None. grad dw_weight
    has ``dw_weight``'s strides (``depthwise.layout.grad_strides``)."""
    dw_shape = spec.dw_weight_shape
    ddw = ddb = dpw = dpb = None
    if pointwise is not None:
        dpw = empty(spec.pw_weight_shape, device=x.device, dtype=x.dtype)
        dpb = empty((spec.out_channels,), device=x.device, dtype=x.dtype) if pointwise.bias is not None else None
    if depthwise is not None:
        ddw = empty_grad(dw_weight, dw_shape, device=x.device, dtype=x.dtype)
        ddb = empty((spec.in_channels,), device=x.device, dtype=x.dtype) if spec.dw_bias else None
    plan = _reduce_plan(spec, pointwise.splits if pointwise is not None else None, dpb is not None,
                        *((depthwise.plan, depthwise.vec) if depthwise is not None else (None, 1)))
    if plan is None:
        return ddw, ddb, dpw, dpb
    grid, pw_integers, dw_integers, constexprs = plan
    some = dpw if dpw is not None else ddw  # a pointer for the absent operands (never read)
    sdw_o, _, _, sdw_tap = ddw.stride() if ddw is not None else grad_strides(dw_weight, dw_shape)
    tensors = (pointwise.weight if pointwise is not None else some, _or(pointwise and pointwise.bias, some),
               _or(dpw, some), _or(dpb, some), depthwise.partial if depthwise is not None else some, _or(ddw, some),
               _or(ddb, some))
    # the pointwise operands, their 4 integers, the depthwise operands, their 2 and ddw's two strides
    launch(kernels.dwsep_reduce_kernel, grid, tensors, (*pw_integers, *dw_integers, sdw_o, sdw_tap),
           {**constexprs, "ACC_DTYPE": accumulator_dtype(x.dtype)}, positions=_REDUCE_TENSOR_POSITIONS)
    return ddw, ddb, dpw, dpb


_REDUCE_TENSOR_POSITIONS = (0, 1, 2, 3, 8, 9, 10)  # dwsep_reduce_kernel's pointer parameters


def _or(tensor, other):
    return tensor if tensor is not None else other


def backward_pointwise(dy, y, x, dw_weight, dw_bias, pw_weight, spec: DwSepSpec, tile: GemmTile,
                       need_weights: bool = True):
    """(dz [B, C, Ho, Wo] in the input dtype: the gradient of the depthwise pre-activation, grad pw_weight
    [N, C, 1, 1], grad pw_bias [N] or None); without ``need_weights`` the last two are None.

    dz and the split-K partials of the pointwise gradients in one pass over dy, then (measured alone)
    the partials' reduction in split order (fp32, deterministic), written in the parameters' dtype;
    the training step's ``backward`` shares that reduction with the depthwise partials."""
    dz, pointwise = _pointwise_pass(dy, y, x, taps_major(dw_weight), dw_bias, pw_weight, spec, tile, need_weights)
    if not need_weights:
        return dz, None, None
    if pointwise is None:  # no pixels
        return dz, torch.zeros(spec.pw_weight_shape, device=x.device, dtype=x.dtype), (
            torch.zeros(spec.out_channels, device=x.device, dtype=x.dtype) if spec.pw_bias else None)
    _, _, dpw, dpb = reduce_partials(x, dw_weight, spec, pointwise, None)
    return dz, dpw, dpb


def backward(dy, y, x, dw_weight, dw_bias, pw_weight, spec: DwSepSpec, tiles: dict, need_input: bool,
             need_weights: bool):
    """(dx, grad dw_weight, grad dw_bias, grad pw_weight, grad pw_bias); unneeded ones are None.

    Three launches for a training step: ``dwsep_bwd_kernel`` (dz and the pointwise partials),
    ``dwsep_bwd_depthwise_kernel`` (dx and the depthwise partials, from dz) and ``dwsep_reduce_kernel``
    (every partial); two without weight gradients. dz is needed whole (every neighbour's) before
    the depthwise backward can read its windows, and the partials whole before their sums: the data
    flow's three steps."""
    weight_t = taps_major(dw_weight)  # the layer's own weight as it is; one copy for any other layout
    dz, pointwise = _pointwise_pass(dy, y, x, weight_t, dw_bias, pw_weight, spec, tiles["backward_pointwise"],
                                    need_weights)
    dx, depthwise = backward_depthwise(dz, x, weight_t, spec, tiles["backward_input"], tiles["backward_weight"],
                                       need_input, need_weights)
    if not need_weights:
        return dx, None, None, None, None
    ddw, ddb, dpw, dpb = reduce_partials(x, dw_weight, spec, pointwise, depthwise)
    if depthwise is None:  # no pixels or no channels: the sums are empty
        ddw = empty_grad(dw_weight, spec.dw_weight_shape, device=x.device, dtype=x.dtype).zero_()
        ddb = torch.zeros(spec.in_channels, device=x.device, dtype=x.dtype) if spec.dw_bias else None
    if pointwise is None:
        dpw = torch.zeros(spec.pw_weight_shape, device=x.device, dtype=x.dtype)
        dpb = torch.zeros(spec.out_channels, device=x.device, dtype=x.dtype) if spec.pw_bias else None
    return dx, ddw, ddb, dpw, dpb
