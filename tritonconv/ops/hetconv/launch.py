"""Host side of the HetConv2d kernels: allocation, grids, tile configs and their candidates."""

from __future__ import annotations

import torch
import triton

from tritonconv.ops.hetconv import kernels
from tritonconv.ops.hetconv.spec import HetConvSpec
from tritonconv.tiles import GemmTile, accumulator_dtype, dot_precision, reduction_splits
from tritonconv._layout import empty, empty_like_layout

# The kernels the tuner measures; "backward" runs the input and the weight kernel.
KERNEL_NAMES = ("forward", "backward_input", "backward_weight")

_CANDIDATES = {
    # rows = pixels, cols = filters of one group, reduce = channels
    "forward": [
        GemmTile(128, 64, 32, 4, 3), GemmTile(128, 128, 32, 8, 3), GemmTile(64, 64, 64, 4, 3),
        GemmTile(128, 64, 64, 4, 4), GemmTile(64, 128, 32, 4, 4), GemmTile(128, 128, 64, 8, 3),
        GemmTile(256, 64, 32, 8, 3), GemmTile(64, 32, 64, 4, 4), GemmTile(128, 32, 64, 4, 3),
        GemmTile(256, 128, 32, 8, 3), GemmTile(64, 64, 32, 4, 2), GemmTile(32, 64, 64, 4, 4),
    ],
    # rows = filters of one group, cols = weight columns, reduce = output pixels
    "backward_weight": [
        GemmTile(64, 64, 64, 4, 3), GemmTile(128, 64, 64, 8, 3), GemmTile(64, 128, 64, 8, 3),
        GemmTile(32, 64, 128, 4, 3), GemmTile(64, 32, 128, 4, 4), GemmTile(128, 128, 32, 8, 3),
        GemmTile(64, 64, 128, 4, 3), GemmTile(32, 32, 128, 4, 4),
    ],
}
_CANDIDATES["backward_input"] = _CANDIDATES["forward"]  # rows = input pixels, cols = channels, reduce = filters

_DEFAULTS = {"forward": GemmTile(128, 64, 32, 4, 3), "backward_input": GemmTile(128, 64, 32, 4, 3),
             "backward_weight": GemmTile(64, 64, 64, 4, 3)}


def _gemm_extent(spec: HetConvSpec, kernel: str) -> tuple[int, int, int]:
    """(rows, cols, reduce) of the kernel's GEMM, to fit tiles to the shape."""
    if kernel == "forward":
        return spec.batch * spec.out_height * spec.out_width, spec.group_out, spec.in_channels
    if kernel == "backward_input":
        return spec.batch * spec.height * spec.width, spec.group_in, spec.out_channels
    return spec.group_out, max(spec.group_in, spec.in_channels - spec.group_in), spec.batch * spec.out_height * spec.out_width


def default_tile(spec: HetConvSpec, kernel: str) -> GemmTile:
    return _DEFAULTS[kernel].fitted(*_gemm_extent(spec, kernel))


def candidate_tiles(spec: HetConvSpec, kernel: str) -> list[GemmTile]:
    """Distinct candidate tiles for this shape (fitting can make several candidates equal)."""
    fitted = [tile.fitted(*_gemm_extent(spec, kernel)) for tile in _CANDIDATES[kernel]]
    return list(dict.fromkeys(fitted))


def _strides(t: torch.Tensor) -> tuple[int, int, int, int]:
    return tuple(t.stride())


def _weight_for_kernels(weight: torch.Tensor) -> torch.Tensor:
    """channels_last, so a [channels, filters] tile of one tap is contiguous along channels; a no-op
    for models moved to channels_last, a small copy otherwise."""
    return weight.contiguous(memory_format=torch.channels_last)



def forward(x, weight, weight_pw, bias, spec: HetConvSpec, tile: GemmTile) -> torch.Tensor:
    y = empty_like_layout(spec.output_shape, x)
    if y.numel() == 0:
        return y
    weight, weight_pw = _weight_for_kernels(weight), weight_pw.contiguous()
    grid = (triton.cdiv(spec.batch * spec.out_height * spec.out_width, tile.block_rows),
            spec.p * triton.cdiv(spec.group_out, tile.block_cols))
    kernels.hetconv_fwd_kernel[grid](
        x, weight, weight_pw, bias.contiguous() if bias is not None else weight, y,
        spec.batch, spec.in_channels, spec.height, spec.width, spec.out_channels, spec.out_height, spec.out_width,
        *_strides(x), *_strides(y), *_strides(weight),
        spec.group_in, spec.group_out,
        K=spec.kernel_size, STRIDE=spec.stride, PAD=spec.padding,
        HAS_BIAS=bias is not None, DOT_PRECISION=dot_precision(x.dtype), ACC_DTYPE=accumulator_dtype(x.dtype),
        BLOCK_M=tile.block_rows, BLOCK_N=tile.block_cols, BLOCK_K=tile.block_reduce,
        num_warps=tile.num_warps, num_stages=tile.num_stages,
    )
    return y


def backward_input(dy, weight, weight_pw, spec: HetConvSpec, tile: GemmTile, like: torch.Tensor) -> torch.Tensor:
    dx = empty_like_layout(spec.input_shape, like)
    if dx.numel() == 0:
        return dx
    weight = _weight_for_kernels(weight)
    grid = (triton.cdiv(spec.batch * spec.height * spec.width, tile.block_rows),
            spec.p * triton.cdiv(spec.group_in, tile.block_cols))
    kernels.hetconv_bwd_input_kernel[grid](
        dy, weight, weight_pw.contiguous(), dx,
        spec.batch, spec.in_channels, spec.height, spec.width, spec.out_channels, spec.out_height, spec.out_width,
        *_strides(dy), *_strides(dx), *_strides(weight),
        spec.group_in, spec.group_out,
        K=spec.kernel_size, STRIDE=spec.stride, PAD=spec.padding,
        DOT_PRECISION=dot_precision(dy.dtype), ACC_DTYPE=accumulator_dtype(dy.dtype),
        BLOCK_M=tile.block_rows, BLOCK_N=tile.block_cols, BLOCK_K=tile.block_reduce,
        num_warps=tile.num_warps, num_stages=tile.num_stages,
    )
    return dx


def backward_weight(dy, x, spec: HetConvSpec, tile: GemmTile):
    """(grad weight, grad weight_pw, grad bias or None), each reduced over the batch in fp32 (fp64)."""
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    pixels = spec.batch * spec.out_height * spec.out_width
    pointwise = spec.in_channels - spec.group_in
    filter_tiles = spec.p * triton.cdiv(spec.group_out, tile.block_rows)
    tap_tiles = spec.kernel_size**2 * triton.cdiv(spec.group_in, tile.block_cols)
    # The bias is summed by the first column tile of the pointwise launch, which runs even when p=1.
    pointwise_tiles = max(1, triton.cdiv(pointwise, tile.block_cols))
    splits = reduction_splits(tile, filter_tiles * (tap_tiles + pointwise_tiles), pixels, x.device)
    pixels_per_split = triton.cdiv(triton.cdiv(pixels, splits), tile.block_reduce) * tile.block_reduce

    partial_w = empty((splits, *spec.weight_shape), device=x.device, dtype=acc_dtype)
    partial_pw = empty((splits, *spec.weight_pw_shape), device=x.device, dtype=acc_dtype)
    partial_bias = empty((splits, spec.out_channels), device=x.device, dtype=acc_dtype) if spec.bias else None
    if pixels == 0:
        zero = lambda t: torch.zeros(t.shape[1:], device=x.device, dtype=x.dtype) if t is not None else None
        return zero(partial_w), zero(partial_pw), zero(partial_bias)

    common = dict(K=spec.kernel_size, STRIDE=spec.stride, PAD=spec.padding, HAS_BIAS=spec.bias,
                  DOT_PRECISION=dot_precision(x.dtype), ACC_DTYPE=accumulator_dtype(x.dtype),
                  BLOCK_N=tile.block_rows, BLOCK_C=tile.block_cols, BLOCK_P=tile.block_reduce,
                  num_warps=tile.num_warps, num_stages=tile.num_stages)
    args = (spec.batch, spec.in_channels, spec.height, spec.width, spec.out_channels, spec.out_height,
            spec.out_width, *_strides(x), *_strides(dy), spec.group_in, spec.group_out, pixels_per_split)
    kernels.hetconv_bwd_weight_kernel[(filter_tiles, tap_tiles, splits)](
        x, dy, partial_w, partial_w, *args, POINTWISE=False, **common)
    kernels.hetconv_bwd_weight_kernel[(filter_tiles, pointwise_tiles, splits)](
        x, dy, partial_pw, partial_bias if partial_bias is not None else partial_pw, *args, POINTWISE=True, **common)
    reduce = lambda t: t.sum(0).to(x.dtype) if t is not None else None
    return reduce(partial_w), reduce(partial_pw), reduce(partial_bias)
