"""ShiftConv2d's adapter for the tuner and the perf suite (see ``tritonconv.adapter``)."""

from __future__ import annotations

from dataclasses import replace

from tritonconv import dispatch, zoo
from tritonconv.adapter import WeightBiasAdapter
from tritonconv.ops.shift import kernels, launch, reference
from tritonconv.ops.shift.spec import ShiftSpec, triton_unsupported
from tritonconv.zoo.shift import resnet50_shift, shiftresnet20

SHAPE_SETS = ("shiftresnet20", "resnet50")


def _shape_set(name: str, expansion: int) -> list:
    sets = {"shiftresnet20": lambda: shiftresnet20(expansion), "resnet50": lambda: resnet50_shift(224)}
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


class ShiftAdapter(WeightBiasAdapter):
    operator = dispatch.Operator.of("shift", kernels, launch, triton_unsupported=triton_unsupported)
    shape_sets = SHAPE_SETS
    specs_for = staticmethod(specs_for)
    launch = launch
    reference = reference

    def weight_fan_in(self, spec: ShiftSpec) -> int:
        return spec.in_channels

    def dense_window(self, spec: ShiftSpec) -> tuple[int, int, int, int]:
        """The k x k conv (padding k//2) that shift + 1 x 1 replaces."""
        return spec.kernel_size, spec.stride, spec.dilation * (spec.kernel_size // 2), spec.dilation

    def layer_call(self, t: dict, spec):
        return self.op.shift_conv2d(t["x"], t["weight"], t["bias"], spec.kernel_size, spec.dilation, spec.stride,
                                    spec.assignment)

    def shrink(self, spec: ShiftSpec) -> ShiftSpec:
        """Batch 2, 7x5 pixels, at most 2 channels per direction (plus a remainder) and 16 filters."""
        dtype = "float32" if spec.dtype == "bfloat16" else spec.dtype  # bf16 is wrong in the interpreter
        k2 = spec.kernel_size**2
        in_channels = min(spec.shift_group, 2) * k2 + min(spec.in_channels - spec.shifted_channels, 3)
        return replace(spec, batch=2, in_channels=max(in_channels, 1), out_channels=min(spec.out_channels, 16),
                       height=min(spec.height, 7), width=min(spec.width, 5), dtype=dtype)


ADAPTER = ShiftAdapter()
