"""ShiftConv2d's harness for the tuner and the perf suite (see ``tritonconv.harness``)."""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from tritonconv import zoo
from tritonconv.harness import WeightBiasHarness, Workload, in_layout
from tritonconv.ops.shift import launch, reference, shapes
from tritonconv.ops.shift.op import OPERATOR
from tritonconv.ops.shift.spec import ShiftSpec

SHAPE_SETS = ("shiftresnet20", "resnet50")


def _shape_set(name: str, expansion: int) -> list:
    sets = {"shiftresnet20": lambda: shapes.shiftresnet20(expansion), "resnet50": lambda: shapes.resnet50_shift(224)}
    if name not in sets:
        raise ValueError(f"shape set {name!r} is not known for shift; expected one of {SHAPE_SETS}")
    return sets[name]()


def specs_for(shape_set: str, *, batch: int, dtype: str, channels_last: bool = False, expansion: int = 1,
              assignment: str = "interleaved") -> list:
    """(label, count, spec) for every shift + 1 x 1 of ``shape_set`` (``expansion``: ShiftResNet's CSC
    expansion rate, the shifted channels per input channel)."""
    return [(layer.name, count, ShiftSpec(batch, layer.in_channels, layer.out_channels, layer.height, layer.width,
                                          layer.kernel_size, 1, layer.stride, assignment, True, dtype, channels_last))
            for layer, count in zoo.unique(_shape_set(shape_set, expansion))]



class ShiftHarness(WeightBiasHarness):
    operator = OPERATOR
    launch = launch
    reference = reference
    shape_sets = SHAPE_SETS
    specs_for = staticmethod(specs_for)

    def make_workload(self, spec: ShiftSpec, device) -> Workload:
        def randn(*shape):
            return torch.randn(*shape, device=device, dtype=spec.torch_dtype)
        tensors = {"x": in_layout(randn(*spec.input_shape), spec.channels_last),
                   "weight": randn(*spec.weight_shape) / spec.in_channels**0.5,
                   "bias": randn(spec.out_channels) if spec.bias else None}
        return Workload(spec, tensors, in_layout(randn(*spec.output_shape), spec.channels_last))

    def dense(self, pass_, work):
        """The k x k conv (padding k//2) that shift + 1 x 1 replaces."""
        spec, t = work.spec, work.tensors
        k, pad = spec.kernel_size, spec.dilation * (spec.kernel_size // 2)
        weight = in_layout(torch.randn(spec.out_channels, spec.in_channels, k, k, device=t["x"].device,
                                     dtype=t["x"].dtype) * 0.05, spec.channels_last)
        if pass_ == "forward":
            return lambda: (F.conv2d(t["x"], weight, t["bias"], spec.stride, pad, spec.dilation),)
        conv_bwd = torch.ops.aten.convolution_backward
        return lambda: tuple(g for g in conv_bwd(work.grad, t["x"], weight, [spec.out_channels] if spec.bias else None,
                                                 [spec.stride] * 2, [pad] * 2, [spec.dilation] * 2, False, [0, 0], 1,
                                                 [True, True, spec.bias]) if g is not None)

    def shrink(self, spec: ShiftSpec) -> ShiftSpec:
        """Batch 2, 7x5 pixels, at most 2 channels per direction (plus a remainder) and 16 filters."""
        dtype = "float32" if spec.dtype == "bfloat16" else spec.dtype  # bf16 is wrong in the interpreter
        k2 = spec.kernel_size**2
        in_channels = min(spec.shift_group, 2) * k2 + min(spec.in_channels - spec.shifted_channels, 3)
        return replace(spec, batch=2, in_channels=max(in_channels, 1), out_channels=min(spec.out_channels, 16),
                       height=min(spec.height, 7), width=min(spec.width, 5), dtype=dtype)


HARNESS = ShiftHarness()
