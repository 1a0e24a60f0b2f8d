"""One object per operator that everything driving it goes through: the torch operators (``_op``), the
dispatcher's per-call choice, the tuner, the perf suite, the static audit and the tests.

An operator folder's ``adapter.py`` subclasses ``Adapter`` once. It says how to run each of its Triton
kernels on named tensors (``forward``, ``backward_input``, ``backward_weight``; ``backward`` for the
whole backward pass when it is more than those two) and its fallback (``fallback_forward``,
``fallback_backward``), and, for the tuner and the perf suite, its shape sets, how to make inputs for a
spec, the dense conv it replaces and a small copy of a spec. The rest (a kernel or a pass as a closure,
the float64 expectation) is written here once. The torch operators in ``op.py`` run the very same
methods, so what is tuned and benchmarked is what a layer call launches.

Tensors travel as a dict by name: ``x``, then the operator's ``params`` in its order (an absent one,
e.g. no bias, is None), then what the backward reads besides (``out``: the forward's output, where an
activation is undone). A backward returns (grad x, one gradient per parameter), None where not needed.

An adapter whose layer keeps a parameter in a layout of its own (the depthwise weights, taps-major) says
so in ``parameter_layouts`` (name -> the function laying a tensor out so), which
``perf.host.call_workload`` applies after the channels_last conversion, as the layer's ``_apply`` does.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Callable

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

    def float64(self) -> Workload:
        """The same inputs upcast to float64 (layouts kept), with the spec saying so."""
        def up(value):
            return value.double() if torch.is_tensor(value) and value.is_floating_point() else value
        return Workload(replace(self.spec, dtype="float64"), {k: up(v) for k, v in self.tensors.items()},
                        up(self.grad))


class Adapter:
    operator: Operator
    shape_sets: tuple[str, ...]  # names accepted by specs_for
    params: tuple[str, ...] = ("weight", "bias")  # the operator's parameters after x, in its order
    parameter_layouts: dict = {}

    # ---- what each operator says ----------------------------------------------------------------------
    def specs_for(self, shape_set: str, *, batch: int, dtype: str, channels_last: bool = False, **options) -> list:
        """(label, count, spec) for every conv of a real network's shape set that this layer replaces."""
        raise NotImplementedError

    def forward(self, spec, t: dict, tile: GemmTile) -> torch.Tensor:
        """The Triton forward."""
        raise NotImplementedError

    def backward_input(self, spec, t: dict, grad: torch.Tensor, tile: GemmTile) -> torch.Tensor:
        raise NotImplementedError

    def backward_weight(self, spec, t: dict, grad: torch.Tensor, tile: GemmTile) -> tuple:
        """One gradient per parameter (None for an absent one)."""
        raise NotImplementedError

    def backward(self, spec, t: dict, grad: torch.Tensor, tiles: dict, need_input: bool, need_weights: bool) -> tuple:
        """The Triton backward pass: (grad x, one gradient per parameter), None where not needed."""
        dx = self.backward_input(spec, t, grad, tiles["backward_input"]) if need_input else None
        grads = (self.backward_weight(spec, t, grad, tiles["backward_weight"]) if need_weights
                 else (None,) * len(self.params))
        return dx, *grads

    def fallback_forward(self, spec, t: dict) -> torch.Tensor:
        """The published formulation's forward (cuDNN calls and torch ops)."""
        raise NotImplementedError

    def fallback_backward(self, spec, t: dict, grad: torch.Tensor, need_input: bool, need_weights: bool) -> tuple:
        """The published formulation's backward, ordered as ``backward``'s."""
        raise NotImplementedError

    def weight_fan_in(self, spec) -> int:
        """Inputs each output reads: ``make_workload``'s random weights are scaled by 1/sqrt of it."""
        raise NotImplementedError

    def dense_window(self, spec) -> tuple[int, int, int, int]:
        """(kernel_size, stride, padding, dilation) of the ordinary conv the layer replaces."""
        raise NotImplementedError

    def shrink(self, spec):
        """A small copy of ``spec`` that keeps its structure, for checks under the interpreter."""
        raise NotImplementedError

    def layer_call(self, tensors: dict, spec) -> torch.Tensor:
        """The layer's public functional op on a workload's tensors (what ``perf host`` times)."""
        raise NotImplementedError

    # ---- written once ---------------------------------------------------------------------------------
    @property
    def call_inputs(self) -> tuple[str, ...]:
        """The workload tensors ``layer_call`` differentiates, in its order."""
        return ("x", *self.params)

    @functools.cached_property
    def op(self):
        """The folder's torch registration (``op.py``, which imports this module: read on first use)."""
        return importlib.import_module(type(self).__module__.rsplit(".", 1)[0] + ".op")

    def candidate_tiles(self, spec, kernel: str) -> list[GemmTile]:
        return self.operator.candidate_tiles(spec, kernel)

    def run_kernel(self, kernel: str, spec, t: dict, grad: torch.Tensor, tile: GemmTile) -> tuple:
        """One Triton kernel's outputs (the weight gradients present)."""
        if kernel == "forward":
            return (self.forward(spec, t, tile),)
        if kernel == "backward_input":
            return (self.backward_input(spec, t, grad, tile),)
        return tuple(g for g in self.backward_weight(spec, t, grad, tile) if g is not None)

    def triton(self, kernel: str, work: Workload, tile: GemmTile) -> Callable[[], tuple]:
        """A closure running one Triton kernel; returns its outputs as a tuple of tensors."""
        return lambda: self.run_kernel(kernel, work.spec, work.tensors, work.grad, tile)

    def triton_pass(self, pass_: str, work: Workload, tiles: dict) -> Callable[[], tuple]:
        """A closure running our kernels' pass as a layer call does (``tiles``: kernel -> tile): its outputs
        ordered as ``fallback``'s. Not the chain of ``triton``'s kernels: a backward may share launches
        between them (dwsep's depthwise launch writes grad input and the grad-weight partials)."""
        spec, t = work.spec, work.tensors
        if pass_ == "forward":
            return lambda: (self.forward(spec, t, tiles["forward"]),)
        return lambda: tuple(g for g in self.backward(spec, t, work.grad, tiles, True, True) if g is not None)

    def fallback(self, pass_: str, work: Workload) -> Callable[[], tuple]:
        """A closure running the fallback's pass: its outputs (grad x and the weight gradients present for
        "backward")."""
        spec, t = work.spec, work.tensors
        if pass_ == "forward":
            return lambda: (self.fallback_forward(spec, t),)
        return lambda: tuple(g for g in self.fallback_backward(spec, t, work.grad, True, True) if g is not None)

    def expected_pass(self, pass_: str, work: Workload) -> tuple:
        """What ``triton_pass`` (and ``fallback``) must return: the fallback's pass run in float64."""
        return self.fallback(pass_, work.float64())()

    def expected(self, kernel: str, work: Workload) -> tuple:
        """What ``triton(kernel, ...)`` must return, computed by the fallback in float64."""
        work64 = work.float64()
        spec64, t = work64.spec, work64.tensors
        if kernel == "forward":
            return (self.fallback_forward(spec64, t),)
        dx, *grads = self.fallback_backward(spec64, t, work64.grad, kernel == "backward_input",
                                            kernel == "backward_weight")
        return (dx,) if kernel == "backward_input" else tuple(g for g in grads if g is not None)

    def make_workload(self, spec, device: torch.device) -> Workload:
        """Random inputs of ``spec``: x and the output gradient in the spec's layout, ``weight`` scaled by
        ``weight_fan_in``, ``bias`` where the spec has one."""
        def randn(*shape):
            return torch.randn(*shape, device=device, dtype=spec.torch_dtype)
        tensors = {"x": in_layout(randn(*spec.input_shape), spec.channels_last),
                   "weight": randn(*spec.weight_shape) / self.weight_fan_in(spec) ** 0.5,
                   "bias": randn(spec.out_channels) if spec.bias else None}
        return Workload(spec, tensors, in_layout(randn(*spec.output_shape), spec.channels_last))

    def dense(self, pass_: str, work: Workload) -> Callable[[], tuple]:
        """The ordinary conv of the same in/out shape (``dense_window``): the thing a user would replace."""
        spec, t = work.spec, work.tensors
        k, stride, padding, dilation = self.dense_window(spec)
        bias = t.get("bias")
        weight = in_layout(torch.randn(spec.out_channels, spec.in_channels, k, k, device=t["x"].device,
                                       dtype=t["x"].dtype) * 0.05, spec.channels_last)
        if pass_ == "forward":
            return lambda: (F.conv2d(t["x"], weight, bias, stride, padding, dilation),)
        conv_bwd = torch.ops.aten.convolution_backward
        return lambda: tuple(g for g in conv_bwd(work.grad, t["x"], weight,
                                                 [spec.out_channels] if bias is not None else None,
                                                 [stride] * 2, [padding] * 2, [dilation] * 2, False, [0, 0], 1,
                                                 [True, True, bias is not None]) if g is not None)


class WeightBiasAdapter(Adapter):
    """An operator whose parameters are ``weight`` and ``bias`` and whose modules follow one API:
    ``launch.forward(x, weight, bias, spec, tile)``, ``launch.backward_input(dy, weight, spec, tile, like)``,
    ``launch.backward_weight(dy, x, spec, tile) -> (dw, db)``, ``reference.fallback_forward(x, weight,
    bias, spec)``, ``reference.fallback_backward(dy, x, weight, spec, need_input, need_weights)``."""

    launch: ModuleType
    reference: ModuleType

    def forward(self, spec, t, tile):
        return self.launch.forward(t["x"], t["weight"], t["bias"], spec, tile)

    def backward_input(self, spec, t, grad, tile):
        return self.launch.backward_input(grad, t["weight"], spec, tile, t["x"])

    def backward_weight(self, spec, t, grad, tile):
        return self.launch.backward_weight(grad, t["x"], spec, tile)

    def fallback_forward(self, spec, t):
        return self.reference.fallback_forward(t["x"], t["weight"], t["bias"], spec)

    def fallback_backward(self, spec, t, grad, need_input, need_weights):
        return self.reference.fallback_backward(grad, t["x"], t["weight"], spec, need_input, need_weights)


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


