"""Host side of the depthwise kernels: allocation, grids, tile configs and their candidates.

Tiles: ``block_rows`` pixels x ``block_cols`` channels; ``block_reduce`` is unused (no GEMM reduction)
and ``splits`` divides the weight gradient's pixel reduction.
"""

from __future__ import annotations

import torch
import triton

from tritonconv.ops.depthwise import kernels
from tritonconv.ops.depthwise.spec import ACTIVATIONS, DepthwiseSpec
from tritonconv.tiles import GemmTile, accumulator_dtype, reduction_splits
from tritonconv._layout import empty, empty_like_layout

KERNEL_NAMES = ("forward", "backward_input", "backward_weight")

_CANDIDATES = {
    "forward": [
        GemmTile(64, 64, 16, 4, 2), GemmTile(128, 32, 16, 4, 2), GemmTile(32, 128, 16, 4, 2),
        GemmTile(128, 64, 16, 8, 2), GemmTile(64, 128, 16, 8, 2), GemmTile(256, 32, 16, 8, 2),
        GemmTile(16, 128, 16, 4, 2), GemmTile(32, 64, 16, 2, 2),
    ],
    "backward_weight": [
        GemmTile(128, 32, 16, 4, 2), GemmTile(64, 64, 16, 4, 2), GemmTile(256, 32, 16, 8, 2),
        GemmTile(128, 64, 16, 8, 2), GemmTile(64, 32, 16, 4, 2, splits=8), GemmTile(128, 32, 16, 4, 2, splits=32),
    ],
}
_CANDIDATES["backward_input"] = _CANDIDATES["forward"]
_DEFAULTS = {"forward": GemmTile(64, 64, 16, 4, 2), "backward_input": GemmTile(64, 64, 16, 4, 2),
             "backward_weight": GemmTile(128, 32, 16, 4, 2)}


def _extent(spec: DepthwiseSpec, kernel: str) -> tuple[int, int, int]:
    """(pixels, channels, unused) the tile is fitted to."""
    if kernel == "forward":
        channels = max(spec.out_channels, spec.in_channels) if spec.concat_input else spec.out_channels
        return spec.batch * spec.out_height * spec.out_width, channels, 1
    if kernel == "backward_input":
        return spec.batch * spec.height * spec.width, spec.in_channels, 1
    return spec.batch * spec.out_height * spec.out_width, spec.out_channels, 1


def default_tile(spec: DepthwiseSpec, kernel: str) -> GemmTile:
    return _DEFAULTS[kernel].fitted(*_extent(spec, kernel))


def candidate_tiles(spec: DepthwiseSpec, kernel: str) -> list[GemmTile]:
    return list(dict.fromkeys(tile.fitted(*_extent(spec, kernel)) for tile in _CANDIDATES[kernel]))



def _window(spec: DepthwiseSpec, activation: str) -> dict:
    return dict(K=spec.kernel_size, STRIDE=spec.stride, PAD=spec.padding, DIL=spec.dilation,
                ACT=ACTIVATIONS[activation], ACC_DTYPE=accumulator_dtype(spec.torch_dtype))


def forward(x, weight, bias, spec: DepthwiseSpec, tile: GemmTile) -> torch.Tensor:
    """The op's output: depthwise maps, or ``cat([x, maps])`` written by the same launch (concat_input)."""
    out = empty_like_layout(spec.output_shape, x)
    if out.numel() == 0:
        return out
    # A channel-offset view: the kernel writes the maps straight into their place in ``out``.
    y = out[:, spec.in_channels:] if spec.concat_input else out
    copy = out[:, :spec.in_channels] if spec.concat_input else out
    channels = max(spec.out_channels, spec.in_channels) if spec.concat_input else spec.out_channels
    grid = (triton.cdiv(spec.batch * spec.out_height * spec.out_width, tile.block_rows),
            triton.cdiv(channels, tile.block_cols))
    kernels.depthwise_fwd_kernel[grid](
        x, weight.contiguous(), bias.contiguous() if bias is not None else weight, y, copy,
        spec.batch, spec.in_channels, spec.height, spec.width, spec.out_channels, spec.out_height, spec.out_width,
        spec.multiplier, *x.stride(), *y.stride(), *copy.stride(),
        **_window(spec, spec.activation), HAS_BIAS=bias is not None, COPY_INPUT=spec.concat_input,
        BLOCK_P=tile.block_rows, BLOCK_C=tile.block_cols, num_warps=tile.num_warps, num_stages=tile.num_stages,
    )
    return out


def backward_input(dy, y, weight, spec: DepthwiseSpec, tile: GemmTile, like: torch.Tensor,
                   activation: str | None = None, add: torch.Tensor | None = None) -> torch.Tensor:
    """dx from the maps' gradient ``dy`` ([B, OC, Ho, Wo]); ``y`` (the maps) masks it through the
    activation; ``add`` is added to dx (a gradient reaching x directly)."""
    activation = spec.activation if activation is None else activation
    dx = empty_like_layout(spec.input_shape, like)
    if dx.numel() == 0:
        return dx
    y = y if ACTIVATIONS[activation] else dy
    add_ = add if add is not None else dx
    grid = (triton.cdiv(spec.batch * spec.height * spec.width, tile.block_rows),
            triton.cdiv(spec.in_channels, tile.block_cols))
    kernels.depthwise_bwd_input_kernel[grid](
        dy, y, weight.contiguous(), add_, dx,
        spec.batch, spec.in_channels, spec.height, spec.width, spec.out_channels, spec.out_height, spec.out_width,
        spec.multiplier, *dy.stride(), *y.stride(), *add_.stride(), *dx.stride(),
        **_window(spec, activation), HAS_ADD=add is not None,
        BLOCK_P=tile.block_rows, BLOCK_C=tile.block_cols, num_warps=tile.num_warps, num_stages=tile.num_stages,
    )
    return dx


def backward_weight(dy, y, x, spec: DepthwiseSpec, tile: GemmTile, activation: str | None = None,
                    has_bias: bool | None = None):
    """(grad weight [OC, 1, K, K], grad bias [OC] or None), reduced over pixels in fp32 (fp64)."""
    activation = spec.activation if activation is None else activation
    has_bias = spec.bias if has_bias is None else has_bias
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    pixels = spec.batch * spec.out_height * spec.out_width
    if pixels == 0:
        return (torch.zeros(spec.weight_shape, device=x.device, dtype=x.dtype),
                torch.zeros(spec.out_channels, device=x.device, dtype=x.dtype) if has_bias else None)
    channel_tiles = triton.cdiv(spec.out_channels, tile.block_cols)
    taps = spec.kernel_size**2
    splits = reduction_splits(GemmTile(tile.block_rows, tile.block_cols, tile.block_rows, splits=tile.splits),
                              channel_tiles * taps, pixels, x.device)
    pixels_per_split = triton.cdiv(triton.cdiv(pixels, splits), tile.block_rows) * tile.block_rows
    partial_w = empty((splits, *spec.weight_shape), device=x.device, dtype=acc_dtype)
    partial_b = empty((splits, spec.out_channels), device=x.device, dtype=acc_dtype) if has_bias else None
    y = y if ACTIVATIONS[activation] else dy
    kernels.depthwise_bwd_weight_kernel[(channel_tiles, taps, splits)](
        x, dy, y, partial_w, partial_b if partial_b is not None else partial_w,
        spec.batch, spec.in_channels, spec.height, spec.width, spec.out_channels, spec.out_height, spec.out_width,
        spec.multiplier, pixels_per_split, *x.stride(), *dy.stride(), *y.stride(),
        **_window(spec, activation), HAS_BIAS=has_bias,
        BLOCK_P=tile.block_rows, BLOCK_C=tile.block_cols, num_warps=tile.num_warps, num_stages=tile.num_stages,
    )
    return partial_w.sum(0).to(x.dtype), partial_b.sum(0).to(x.dtype) if partial_b is not None else None
