"""Tile configurations shared by every implicit-GEMM kernel, and their fitting to a shape."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import triton

from tritonconv import env

MIN_DOT_TILE = 16  # the GPU compiler rejects tl.dot tiles under 16 (the interpreter does not)


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
        return cls(**data)

    def label(self) -> str:
        split = f"_s{self.splits}" if self.splits else ""
        return (f"{self.block_rows}x{self.block_cols}x{self.block_reduce}"
                f"_w{self.num_warps}_st{self.num_stages}{split}")

    def fitted(self, rows: int, cols: int, reduce: int) -> "GemmTile":
        """Shrink blocks that are larger than the problem (never below the dot minimum)."""
        def fit(block, extent):
            return min(block, max(MIN_DOT_TILE, triton.next_power_of_2(max(extent, 1))))
        return GemmTile(fit(self.block_rows, rows), fit(self.block_cols, cols), fit(self.block_reduce, reduce),
                        self.num_warps, self.num_stages, self.splits)


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 follows torch's cuDNN tf32 switch, so we compare with cuDNN at the precision it runs."""
    if dtype == torch.float32 and torch.backends.cudnn.allow_tf32 and not env.triton_interpret():
        return "tf32"
    return "ieee"


def accumulator_dtype(dtype: torch.dtype):
    import triton.language as tl
    return tl.float64 if dtype == torch.float64 else tl.float32


def multiprocessor_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def reduction_splits(tile: GemmTile, programs: int, reduce: int, device: torch.device) -> int:
    """How many programs share one reduction: enough to fill the GPU about twice, no more."""
    chunks = triton.cdiv(max(reduce, 1), tile.block_reduce)
    if tile.splits:
        return max(1, min(tile.splits, chunks))
    wanted = triton.cdiv(2 * multiprocessor_count(device), max(programs, 1))
    return max(1, min(wanted, chunks))
