"""The interface the tuner and the perf suite drive every operator through.

An operator folder provides one ``Harness``: it makes inputs for a spec, runs each Triton kernel with
a given tile, runs the fallback and the dense conv the layer replaces, and compares outputs. The
tuner and the perf suite stay generic; adding an operator means adding its harness to ``registry``.
A harness whose layer keeps a parameter in a layout of its own (the depthwise weights, taps-major)
says so in ``parameter_layouts`` (name -> the function laying a tensor out so), which
``perf.host.call_workload`` applies after the channels_last conversion, as the layer's ``_apply`` does.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import ModuleType
from typing import Callable, Protocol

import torch
import torch.nn.functional as F

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

    call_inputs: tuple[str, ...]  # the workload tensors ``layer_call`` differentiates, in its order

    def layer_call(self, tensors: dict, spec) -> torch.Tensor:
        """The layer's public functional op on a workload's tensors (what ``perf host`` times)."""


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


def in_layout(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t


class WeightBiasHarness:
    """The kernel plumbing of an operator whose parameters are ``weight`` and ``bias`` and whose
    modules follow one API: ``launch.forward(x, weight, bias, spec, tile)``,
    ``launch.backward_input(dy, weight, spec, tile, like)``, ``launch.backward_weight(dy, x, spec, tile)
    -> (dw, db)``, ``launch.candidate_tiles(spec, kernel)``, ``reference.fallback_forward(x, weight,
    bias, spec)`` and ``reference.fallback_backward(dy, x, weight, spec, need_input, need_weights)
    -> (dx, dw, db)``. Subclasses add the operator, shape sets, shrinking, and the two facts the
    workload and the dense conv need: ``weight_fan_in(spec)`` and ``dense_window(spec)``."""

    launch: ModuleType
    reference: ModuleType

    def weight_fan_in(self, spec) -> int:
        """Inputs each output reads: random weights are scaled by 1/sqrt of it."""
        raise NotImplementedError

    def dense_window(self, spec) -> tuple[int, int, int, int]:
        """(kernel_size, stride, padding, dilation) of the ordinary conv the layer replaces."""
        raise NotImplementedError

    def make_workload(self, spec, device: torch.device) -> Workload:
        def randn(*shape):
            return torch.randn(*shape, device=device, dtype=spec.torch_dtype)
        tensors = {"x": in_layout(randn(*spec.input_shape), spec.channels_last),
                   "weight": randn(*spec.weight_shape) / self.weight_fan_in(spec) ** 0.5,
                   "bias": randn(spec.out_channels) if spec.bias else None}
        return Workload(spec, tensors, in_layout(randn(*spec.output_shape), spec.channels_last))

    def dense(self, pass_, work):
        spec, t = work.spec, work.tensors
        k, stride, padding, dilation = self.dense_window(spec)
        weight = in_layout(torch.randn(spec.out_channels, spec.in_channels, k, k, device=t["x"].device,
                                       dtype=t["x"].dtype) * 0.05, spec.channels_last)
        if pass_ == "forward":
            return lambda: (F.conv2d(t["x"], weight, t["bias"], stride, padding, dilation),)
        conv_bwd = torch.ops.aten.convolution_backward
        return lambda: tuple(g for g in conv_bwd(work.grad, t["x"], weight, [spec.out_channels] if spec.bias else None,
                                                 [stride] * 2, [padding] * 2, [dilation] * 2, False, [0, 0], 1,
                                                 [True, True, spec.bias]) if g is not None)

    def candidate_tiles(self, spec, kernel):
        return self.launch.candidate_tiles(spec, kernel)

    def triton(self, kernel, work, tile):
        t, spec, launch = work.tensors, work.spec, self.launch
        if kernel == "forward":
            return lambda: (launch.forward(t["x"], t["weight"], t["bias"], spec, tile),)
        if kernel == "backward_input":
            return lambda: (launch.backward_input(work.grad, t["weight"], spec, tile, t["x"]),)
        return lambda: tuple(g for g in launch.backward_weight(work.grad, t["x"], spec, tile) if g is not None)

    def fallback(self, pass_, work):
        t, spec, reference = work.tensors, work.spec, self.reference
        if pass_ == "forward":
            return lambda: (reference.fallback_forward(t["x"], t["weight"], t["bias"], spec),)
        return lambda: tuple(g for g in reference.fallback_backward(work.grad, t["x"], t["weight"], spec, True, True)
                             if g is not None)

    def expected(self, kernel, work):
        t = {k: v.double() if v is not None else None for k, v in work.tensors.items()}
        spec64 = replace(work.spec, dtype="float64")
        if kernel == "forward":
            return (self.reference.fallback_forward(t["x"], t["weight"], t["bias"], spec64),)
        dx, dw, db = self.reference.fallback_backward(work.grad.double(), t["x"], t["weight"], spec64,
                                                      kernel == "backward_input", kernel == "backward_weight")
        return (dx,) if kernel == "backward_input" else tuple(g for g in (dw, db) if g is not None)
