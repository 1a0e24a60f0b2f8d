"""Tile configurations shared by every implicit-GEMM kernel, their fitting to a shape, and the split-K
reduction (how many programs share one reduction, and the deterministic sum of their partials)."""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, fields, replace
from typing import Callable

import torch
import triton
import triton.language as tl

from tritonconv import env
from tritonconv._launcher import launch
from tritonconv._layout import empty
from tritonconv.kernel_helpers import split_sum_kernel

MIN_DOT_TILE = 16  # the GPU compiler rejects tl.dot tiles under 16 (the interpreter does not)
NUM_WARPS_CHOICES = (1, 2, 4, 8, 16)  # warps per program our launches use; 16 is 512 threads
BLOCK_FIELDS = ("block_rows", "block_cols", "block_reduce")
MAX_BLOCK_NUMEL = triton.language.TRITON_MAX_TENSOR_NUMEL  # the compiler's limit on one tensor's elements


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for the host. triton.cdiv and triton.next_power_of_2 are constexpr functions in
    triton 3.6, about 2 us per call from Python: the launchers call these on every layer call instead."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1), for the host (see ``cdiv``)."""
    return 1 << (n - 1).bit_length() if n > 1 else 1


@dataclass(frozen=True)
class GemmTile:
    """One program computes a [block_rows, block_cols] output tile, reducing block_reduce at a time.

    ``splits`` divides the reduction across programs (weight gradients); 0 lets the launcher choose.
    """

    block_rows: int
    block_cols: int
    block_reduce: int
    num_warps: int = 4
    num_stages: int = 3
    splits: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "GemmTile":
        """The tile ``to_dict`` wrote (check a dict from elsewhere with ``tile_dict_problem`` first)."""
        return cls(**data)

    def label(self) -> str:
        split = f"_s{self.splits}" if self.splits else ""
        return (f"{self.block_rows}x{self.block_cols}x{self.block_reduce}"
                f"_w{self.num_warps}_st{self.num_stages}{split}")

    def fitted(self, rows: int, cols: int, reduce: int) -> "GemmTile":
        """Shrink blocks that are larger than the problem (never below the dot minimum)."""
        def fit(block, extent):
            return min(block, max(MIN_DOT_TILE, next_power_of_2(max(extent, 1))))
        return GemmTile(fit(self.block_rows, rows), fit(self.block_cols, cols), fit(self.block_reduce, reduce),
                        self.num_warps, self.num_stages, self.splits)


def wide_dtype(dtype: str) -> bool:
    """4- and 8-byte operands (float32, float64): where a tile sized for 16-bit ones can spill or pass
    the shared memory, so kernels take tiles of their own."""
    return dtype in ("float32", "float64")


@dataclass(frozen=True)
class KernelTiles:
    """One kernel's tile table: its default tile, the tuner's candidates, the names the kernel gives the
    tile's blocks (rows, cols, reduce; None where the launcher derives that block itself) and the fewest
    rows it takes (a weight-gradient kernel keeps 64 filter rows: fewer would leave wgmma for mma.sync;
    ``min_reduce`` likewise where the reduce block is a dot's rows too). ``wide_default``, where given, is
    the default for 4- and 8-byte dtypes (a tile sized for 16-bit operands can spill there)."""

    default: GemmTile
    candidates: tuple[GemmTile, ...]
    blocks: tuple[str | None, str | None, str | None]
    min_rows: int = MIN_DOT_TILE
    wide_default: GemmTile | None = None
    min_reduce: int = MIN_DOT_TILE

    def default_for(self, dtype: str) -> GemmTile:
        return self.wide_default if wide_dtype(dtype) and self.wide_default is not None else self.default

    def launch_args(self, tile: GemmTile) -> dict:
        """The tile as the kernel's keyword arguments: its named blocks, num_warps and num_stages."""
        named = zip(self.blocks, (tile.block_rows, tile.block_cols, tile.block_reduce))
        return {**{name: value for name, value in named if name}, "num_warps": tile.num_warps,
                "num_stages": tile.num_stages}


class TileTable:
    """An operator's tiles: per kernel its ``KernelTiles``, and ``extent(spec, kernel)``, the (rows, cols,
    reduce) of the kernel's GEMM on a shape, which every tile is fitted to (no block larger than the
    problem). Declared in each operator's launch.py, whose source the tuning cache's key hashes."""

    def __init__(self, kernels: dict[str, KernelTiles], extent: Callable[[object, str], tuple[int, int, int]]):
        self.kernels = kernels
        self.extent = extent

    def __getitem__(self, kernel: str) -> KernelTiles:
        return self.kernels[kernel]

    def fitted(self, tile: GemmTile, spec, kernel: str) -> GemmTile:
        fitted = tile.fitted(*self.extent(spec, kernel))
        table = self.kernels[kernel]
        return replace(fitted, block_rows=max(fitted.block_rows, table.min_rows),
                       block_reduce=max(fitted.block_reduce, table.min_reduce))

    def default_tile(self, spec, kernel: str) -> GemmTile:
        return self.fitted(self.kernels[kernel].default_for(spec.dtype), spec, kernel)

    def candidate_tiles(self, spec, kernel: str) -> list[GemmTile]:
        """The distinct candidates fitted to this shape (fitting can make several equal)."""
        return list(dict.fromkeys(self.fitted(tile, spec, kernel) for tile in self.kernels[kernel].candidates))


def tile_dict_problem(data) -> str | None:
    """Why ``data`` (e.g. read from the tuning cache) is not a tile every kernel compiles, or None.

    Block sizes are powers of two >= MIN_DOT_TILE (tl.arange and tl.dot need both) and no two of them
    span more than Triton's largest tensor; num_warps is one of NUM_WARPS_CHOICES, num_stages >= 1,
    splits >= 0 (0: the launcher chooses). Fields left out take GemmTile's defaults.
    """
    if not isinstance(data, dict):
        return f"tile {data!r} is not a table of tile fields"
    defaults = {f.name: f.default for f in fields(GemmTile)}
    unknown = sorted(str(name) for name in data if name not in defaults)
    if unknown:
        return f"unknown tile fields {unknown} (a tile has {list(defaults)})"
    missing = [name for name in BLOCK_FIELDS if name not in data]
    if missing:
        return f"tile lacks {missing}"
    for name, value in data.items():
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{name}={value!r} is not an int"
    tile = {**defaults, **data}
    for name in BLOCK_FIELDS:
        if tile[name] < MIN_DOT_TILE or tile[name] & (tile[name] - 1):
            return f"{name}={tile[name]} is not a power of two >= {MIN_DOT_TILE}"
    rows, cols, reduce = (tile[name] for name in BLOCK_FIELDS)
    if max(rows * cols, rows * reduce, cols * reduce) > MAX_BLOCK_NUMEL:
        return f"blocks {rows}x{cols}x{reduce} exceed Triton's {MAX_BLOCK_NUMEL} elements per block"
    if tile["num_warps"] not in NUM_WARPS_CHOICES:
        return f"num_warps={tile['num_warps']} is not one of {NUM_WARPS_CHOICES}"
    if tile["num_stages"] < 1:
        return f"num_stages={tile['num_stages']} is not >= 1"
    if tile["splits"] < 0:
        return f"splits={tile['splits']} is not >= 0"
    return None


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 follows torch's cuDNN tf32 switch, so we compare with cuDNN at the precision it runs."""
    if dtype == torch.float32 and torch.backends.cudnn.allow_tf32 and not env.triton_interpret():
        return "tf32"
    return "ieee"


def accumulator_dtype(dtype: torch.dtype):
    """The kernels' accumulator: fp64 for fp64 operands, else fp32 (a launch argument)."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def precision(dtype: torch.dtype) -> dict:
    """The DOT_PRECISION and ACC_DTYPE constexprs of a kernel on ``dtype`` operands: read per call, never
    planned (``dot_precision`` follows torch's tf32 switch and the interpreter). The dict is shared:
    callers merge it, never change it."""
    return _precision(dtype, dot_precision(dtype))


@functools.lru_cache(maxsize=16)
def _precision(dtype: torch.dtype, dot: str) -> dict:
    return {"DOT_PRECISION": dot, "ACC_DTYPE": accumulator_dtype(dtype)}


def multiprocessor_count(device: torch.device) -> int:
    if device.type == "cuda":
        return _multiprocessors(torch.cuda.current_device() if device.index is None else device.index)
    return 1


@functools.cache
def _multiprocessors(index: int) -> int:  # a device's SM count never changes; the backward asks per call
    return torch.cuda.get_device_properties(index).multi_processor_count


SPLIT_SUM_BLOCK = 1024  # elements per program of the partials' sum


def sum_splits(partial: torch.Tensor, weight_shape: tuple, bias_shape: tuple | None, dtype: torch.dtype,
               weight: torch.Tensor | None = None) -> tuple:
    """(grad weight, grad bias or None) from a split-K kernel's ``partial`` [splits, total] (fp32 or fp64;
    each row the split's flattened weight gradient, then its bias gradient): summed in split order, one
    launch for both, in ``dtype``. ``weight``: the buffer to write the weight gradient into (a dense
    tensor whose memory order is the rows' order; default a contiguous one)."""
    splits, total = partial.shape
    if weight is None:
        weight = empty(weight_shape, device=partial.device, dtype=dtype)
    bias = empty(bias_shape, device=partial.device, dtype=dtype) if bias_shape is not None else None
    launch(split_sum_kernel, (cdiv(total, SPLIT_SUM_BLOCK),), (partial, weight, bias), (splits, weight.numel(), total),
           {"BLOCK": SPLIT_SUM_BLOCK})
    return weight, bias


def reduction_splits(tile: GemmTile, programs: int, reduce: int, device: torch.device) -> int:
    """How many programs share one reduction: enough to fill the GPU about twice, no more."""
    chunks = cdiv(max(reduce, 1), tile.block_reduce)
    if tile.splits:
        return max(1, min(tile.splits, chunks))
    wanted = cdiv(2 * multiprocessor_count(device), max(programs, 1))
    return max(1, min(wanted, chunks))
