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

Backward, per training step: one copy (the depthwise weights taps-major, shared with the depthwise
grad-input launcher through a view), ``dwsep_bwd_kernel`` (dz in the input dtype and the pointwise
gradients' split-K partials, one read of dy), ``dwsep_reduce_kernel`` (the partials in split order),
then the depthwise kernels on dz (grad input; grad dw_weight and dw_bias, two launches).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from tritonconv._layout import empty, empty_like_layout
from tritonconv.ops.depthwise import launch as depthwise_launch
from tritonconv.ops.depthwise.launch import operand, vector_width
from tritonconv.ops.depthwise.spec import ACTIVATIONS
from tritonconv.ops.dwsep import kernels
from tritonconv.ops.dwsep.spec import DwSepSpec
from tritonconv.tiles import GemmTile, accumulator_dtype, cdiv, dot_precision, reduction_splits

_CANDIDATES = {
    "forward": [
        GemmTile(64, 64, 32, 4, 2), GemmTile(64, 128, 32, 4, 2), GemmTile(128, 64, 32, 8, 2),
        GemmTile(64, 64, 64, 4, 2), GemmTile(64, 128, 32, 8, 2), GemmTile(128, 128, 32, 8, 2),
        GemmTile(64, 256, 32, 8, 2), GemmTile(64, 64, 16, 4, 2),
    ],
    "backward_pointwise": [
        GemmTile(64, 64, 64, 4, 2), GemmTile(64, 32, 64, 4, 2), GemmTile(128, 64, 64, 8, 2),
        GemmTile(64, 64, 128, 8, 2), GemmTile(64, 128, 64, 8, 2), GemmTile(128, 32, 64, 4, 2),
    ],
}
# Default tiles in order of preference: the first whose filter plan recomputes the depthwise tile the
# fewest times (the wider ones hold more filters per program, on twice the threads).
_DEFAULTS = {"forward": (GemmTile(64, 64, 32, 4, 2), GemmTile(64, 128, 32, 8, 2)),
             "backward_pointwise": (GemmTile(64, 64, 64, 4, 2), GemmTile(64, 64, 64, 8, 2))}
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


def _extent(spec: DwSepSpec, kernel: str) -> tuple[int, int, int]:
    pixels = spec.batch * spec.out_height * spec.out_width
    return {"forward": (pixels, spec.out_channels, spec.in_channels),
            "backward_pointwise": (pixels, spec.in_channels, spec.out_channels)}[kernel]


def _fit(tile: GemmTile, spec: DwSepSpec, kernel: str) -> GemmTile:
    """The tile fitted to the layer, its dots' rows kept at wgmma's 64 (forward: pixels; backward:
    pixels and the filter chunk, the weight gradient's rows): masked rows cost tensor-core time only."""
    fitted = tile.fitted(*_extent(spec, kernel))
    rows = max(fitted.block_rows, min(tile.block_rows, _WGMMA_ROWS))
    reduce = (max(fitted.block_reduce, min(tile.block_reduce, _WGMMA_ROWS)) if kernel == "backward_pointwise"
              else fitted.block_reduce)
    return GemmTile(rows, fitted.block_cols, reduce, tile.num_warps, tile.num_stages, tile.splits)


def default_tile(spec: DwSepSpec, kernel: str) -> GemmTile:
    if kernel in ("backward_input", "backward_weight"):
        return depthwise_launch.default_tile(spec.depthwise(), kernel)
    tiles = [_fit(tile, spec, kernel) for tile in _DEFAULTS[kernel]]
    if kernel == "backward_pointwise" and spec.torch_dtype.itemsize >= 4:
        tiles.reverse()  # fp32 / fp64 operands beside the accumulators spill at 4 warps
    return min(tiles, key=lambda tile: filter_plan(spec, kernel, tile).groups)


def candidate_tiles(spec: DwSepSpec, kernel: str) -> list[GemmTile]:
    if kernel in ("backward_input", "backward_weight"):
        return depthwise_launch.candidate_tiles(spec.depthwise(), kernel)
    return list(dict.fromkeys(_fit(tile, spec, kernel) for tile in _CANDIDATES[kernel]))


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


def _common(spec: DwSepSpec, dtype: torch.dtype) -> dict:
    return dict(K=spec.kernel_size, STRIDE=spec.stride, PAD=spec.padding, DIL=spec.dilation,
                ACT=ACTIVATIONS[spec.activation], OUT_ACT=ACTIVATIONS[spec.out_activation],
                HAS_DW_BIAS=spec.dw_bias, DOT_PRECISION=dot_precision(dtype), ACC_DTYPE=accumulator_dtype(dtype))


def _check_int32(spec: DwSepSpec, *tensors) -> None:
    """Pixel indices and offsets inside one image are int32 (an image's base offset is int64)."""
    if spec.batch * spec.out_height * spec.out_width >= _INT32:
        raise ValueError(f"{spec.describe()}: 2^31 output pixels or more; the dwsep kernels index pixels in int32")
    for t in tensors:
        if sum((n - 1) * abs(s) for n, s in zip(t.shape[1:], t.stride()[1:])) >= _INT32:
            raise ValueError(f"one image of a tensor of shape {tuple(t.shape)} spans 2^31 elements or more; "
                             f"the dwsep kernels address an image with int32 offsets")


def taps_major(weight: torch.Tensor) -> torch.Tensor:
    """dw_weight [C, 1, k, k] -> [k*k, C] contiguous in the accumulator dtype, by one copy per call (as
    ``depthwise.launch._taps_major``, which explains why it is not cached): each tap's weights are one
    vector load, and the depthwise FFMAs need no conversion of them."""
    acc_dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    out = torch.empty((weight.shape[2] * weight.shape[3], weight.shape[0]), device=weight.device, dtype=acc_dtype)
    return out.copy_(weight.reshape(weight.shape[0], -1).t())


def depthwise_weight_view(weight_t: torch.Tensor, shape) -> torch.Tensor:
    """The taps-major copy seen as the [C, 1, k, k] parameter it was made from (a view: the depthwise
    launchers' own taps-major transpose of it is then a view too, not one more copy)."""
    return weight_t.t().reshape(shape)


def _bias_or(bias, other):
    return bias.contiguous() if bias is not None else other


def forward(x, dw_weight, dw_bias, pw_weight, pw_bias, spec: DwSepSpec, tile: GemmTile) -> torch.Tensor:
    y = empty_like_layout(spec.output_shape, x)
    if y.numel() == 0:
        return y
    _check_int32(spec, x, y)
    vec = vector_width((spec.in_channels, spec.out_channels), x, y)
    plan = filter_plan(spec, "forward", tile)
    pixels = spec.batch * spec.out_height * spec.out_width
    weight_t = taps_major(dw_weight)
    (x_, *x_strides), (y_, *y_strides) = (operand(t, vec) for t in (x, y))
    kernels.dwsep_fwd_kernel[(cdiv(pixels, tile.block_rows), plan.groups)](
        x_, weight_t, _bias_or(dw_bias, weight_t), pw_weight.contiguous(), _bias_or(pw_bias, weight_t), y_,
        pixels, spec.in_channels // vec, spec.height, spec.width, spec.out_channels // vec, spec.out_height,
        spec.out_width, *x_strides, *y_strides,
        **_common(spec, x.dtype), HAS_PW_BIAS=pw_bias is not None, VEC=vec, CHUNKS=plan.per_program,
        BLOCK_P=tile.block_rows, BLOCK_N=tile.block_cols, BLOCK_C=tile.block_reduce,
        num_warps=tile.num_warps, num_stages=tile.num_stages,
    )
    return y


def backward_pointwise(dy, y, x, dw_weight, dw_bias, pw_weight, spec: DwSepSpec, tile: GemmTile,
                       need_weights: bool = True, weight_t: torch.Tensor | None = None):
    """(dz [B, C, Ho, Wo] in the input dtype: the gradient of the depthwise pre-activation, grad pw_weight
    [N, C, 1, 1], grad pw_bias [N] or None); without ``need_weights`` the last two are None.

    Two launches: dz and the split-K partials of the pointwise gradients in one pass over dy, then the
    partials' reduction in split order (fp32, deterministic), written in the parameters' dtype.
    ``weight_t``: ``taps_major(dw_weight)`` if the caller made it already."""
    dz = empty_like_layout((spec.batch, spec.in_channels, spec.out_height, spec.out_width), x)
    pixels = spec.batch * spec.out_height * spec.out_width
    has_pw_bias = need_weights and spec.pw_bias
    if pixels == 0:
        zeros = (torch.zeros(spec.pw_weight_shape, device=x.device, dtype=x.dtype),
                 torch.zeros(spec.out_channels, device=x.device, dtype=x.dtype) if has_pw_bias else None)
        return (dz, *zeros) if need_weights else (dz, None, None)
    y = y if ACTIVATIONS[spec.out_activation] else dy
    _check_int32(spec, x, dy, y, dz)
    vec = vector_width((spec.in_channels, spec.out_channels), x, dy, y, dz)
    plan = filter_plan(spec, "backward_pointwise", tile, one_group=not need_weights)
    channel_tiles = cdiv(spec.in_channels, tile.block_cols)
    splits = min(_MAX_GRID_YZ, reduction_splits(GemmTile(tile.block_rows, tile.block_cols, tile.block_rows,
                                                         splits=tile.splits),
                                                channel_tiles * plan.groups, pixels, x.device))
    pixels_per_split = cdiv(cdiv(pixels, splits), tile.block_rows) * tile.block_rows
    splits = cdiv(pixels, pixels_per_split)
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    if need_weights:
        if splits * spec.out_channels * spec.in_channels >= _INT32:
            raise ValueError(f"{spec.describe()}: {splits} split-K partials of grad pw_weight span 2^31 elements")
        partial = empty((splits, spec.out_channels, spec.in_channels), device=x.device, dtype=acc_dtype)
        partial_bias = empty((splits, spec.out_channels), device=x.device, dtype=acc_dtype) if has_pw_bias else partial
    else:
        partial = partial_bias = dz
    weight_t = taps_major(dw_weight) if weight_t is None else weight_t
    (x_, *x_strides), (dy_, *dy_strides), (y_, *y_strides), (dz_, *dz_strides) = (
        operand(t, vec) for t in (x, dy, y, dz))
    kernels.dwsep_bwd_kernel[(channel_tiles, plan.groups, splits)](
        x_, weight_t, _bias_or(dw_bias, weight_t), pw_weight.contiguous(), dy_, y_, dz_, partial, partial_bias,
        pixels, pixels_per_split, spec.in_channels // vec, spec.height, spec.width, spec.out_channels // vec,
        spec.out_height, spec.out_width, *x_strides, *dy_strides, *y_strides, *dz_strides,
        **_common(spec, x.dtype), HAS_PW_BIAS=has_pw_bias, WEIGHT_GRADS=need_weights,
        ALL_FILTERS=plan.per_program * plan.block_n >= spec.out_channels, VEC=vec, CHUNKS=plan.per_program,
        BLOCK_P=tile.block_rows, BLOCK_C=tile.block_cols, BLOCK_N=tile.block_reduce,
        num_warps=tile.num_warps, num_stages=tile.num_stages,
    )
    if not need_weights:
        return dz, None, None
    grad_pw = empty(spec.pw_weight_shape, device=x.device, dtype=x.dtype)
    grad_pb = empty((spec.out_channels,), device=x.device, dtype=x.dtype) if has_pw_bias else None
    weights = spec.out_channels * spec.in_channels
    block = 1024
    programs = cdiv(weights, block) + (cdiv(spec.out_channels, block) if has_pw_bias else 0)
    kernels.dwsep_reduce_kernel[(programs,)](
        partial, partial_bias, grad_pw, grad_pb if grad_pb is not None else grad_pw, splits, weights,
        spec.out_channels, HAS_PW_BIAS=has_pw_bias, ACC_DTYPE=accumulator_dtype(x.dtype), BLOCK=block, num_warps=4,
    )
    return dz, grad_pw, grad_pb


def backward(dy, y, x, dw_weight, dw_bias, pw_weight, spec: DwSepSpec, tiles: dict, need_input: bool,
             need_weights: bool):
    """(dx, grad dw_weight, grad dw_bias, grad pw_weight, grad pw_bias); unneeded ones are None."""
    weight_t = taps_major(dw_weight)
    dz, dpw, dpb = backward_pointwise(dy, y, x, dw_weight, dw_bias, pw_weight, spec, tiles["backward_pointwise"],
                                      need_weights, weight_t)
    depthwise = spec.depthwise()
    dx = (depthwise_launch.backward_input(dz, dz, depthwise_weight_view(weight_t, dw_weight.shape), depthwise,
                                          tiles["backward_input"], x)
          if need_input else None)
    if not need_weights:
        return dx, None, None, None, None
    ddw, ddb = depthwise_launch.backward_weight(dz, dz, x, depthwise, tiles["backward_weight"])
    return dx, ddw, ddb, dpw, dpb
