"""The interface the tuner and the perf suite drive every operator through.

An operator folder provides one ``Harness``: it makes inputs for a spec, runs each Triton kernel with
a given tile, runs the fallback and the dense conv the layer replaces, and compares outputs. The
tuner and the perf suite stay generic; adding an operator means adding its harness to ``registry``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from tritonconv.dispatch import Operator
from tritonconv.tiles import GemmTile


@dataclass
class Workload:
    """Inputs of one call: ``tensors`` by name (parameters included) and the upstream gradient."""

    spec: object
    tensors: dict
    grad: torch.Tensor


class Harness(Protocol):
    operator: Operator
    shape_sets: tuple[str, ...]  # names accepted by specs_for

    def specs_for(self, shape_set: str, *, batch: int, dtype: str, channels_last: bool = False, **options) -> list:
        """(label, count, spec) for every conv of a real network's shape set that this layer replaces."""

    def make_workload(self, spec, device: torch.device) -> Workload: ...

    def candidate_tiles(self, spec, kernel: str) -> list[GemmTile]: ...

    def triton(self, kernel: str, work: Workload, tile: GemmTile) -> Callable[[], tuple]:
        """A closure running one Triton kernel; returns its outputs as a tuple of tensors."""

    def fallback(self, pass_: str, work: Workload) -> Callable[[], tuple]:
        """A closure running the published formulation's pass: the pass's outputs (input and parameter
        gradients for "backward"), in the fallback's own order."""

    def expected(self, kernel: str, work: Workload) -> tuple:
        """What ``triton(kernel, ...)`` must return, computed by the fallback in float64."""

    def dense(self, pass_: str, work: Workload) -> Callable[[], tuple]:
        """The ordinary conv of the same in/out shape: the thing a user would replace."""

    def shrink(self, spec):
        """A small copy of ``spec`` that keeps its structure, for checks under the interpreter."""


def tolerance(dtype: torch.dtype) -> float:
    """Relative-norm error accepted against a float64 reference (tf32 rounding included for fp32)."""
    return {torch.float64: 1e-10, torch.float32: 5e-3, torch.float16: 5e-3, torch.bfloat16: 3e-2}[dtype]


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.double(), expected.double()
    if not torch.isfinite(actual).all():
        return float("inf")
    scale = expected.norm().item()
    diff = (actual - expected).norm().item()
    return diff / scale if scale > 0 else diff


def max_relative_error(actual: tuple, expected: tuple) -> float:
    if len(actual) != len(expected):
        raise ValueError(f"{len(actual)} outputs, expected {len(expected)}")
    return max((relative_error(a, e) for a, e in zip(actual, expected) if e.numel()), default=0.0)
