"""VersatileConv2d's adapter for the tuner and the perf suite (see ``tritonconv.adapter``)."""

from __future__ import annotations

from dataclasses import replace

from tritonconv import dispatch, zoo
from tritonconv._weights import in_grad_layout, taps_major
from tritonconv.adapter import WeightBiasAdapter
from tritonconv.ops.versatile import kernels, launch, reference
from tritonconv.ops.versatile.spec import VersatileSpec, triton_unsupported

SHAPE_SETS = ("vgg16", "resnet50")


def _shape_set(name: str) -> tuple[list, int]:
    """(layers, versatile kernel size): VGG-16 at k=3 on CIFAR, ResNet-50's 3x3 convs as k=5 (the paper's)."""
    sets = {"vgg16": lambda: (zoo.vgg16(32), 3), "resnet50": lambda: (zoo.resnet50(224), 5)}
    if name not in sets:
        raise ValueError(f"shape set {name!r} is not known for versatile; expected one of {SHAPE_SETS}")
    return sets[name]()


def specs_for(shape_set: str, *, batch: int, dtype: str, channels_last: bool = False, delta: int = 0,
              g: int = 1) -> list:
    """(label, count, spec) for every conv of ``shape_set`` that a VersatileConv2d replaces. The input conv
    (3 channels) stays dense. Output channels are rounded down to a multiple of s_num * n_c (ResNet-50's
    64..512 at k=5 become 63..510): the layer needs that divisibility, and the paper resizes its widths."""
    layers, k = _shape_set(shape_set)
    secondaries = (k + 1) // 2 * (delta // g + 1)
    out = []
    for layer, count in zoo.unique(layers):
        if layer.in_channels == 3 or delta >= layer.in_channels or layer.out_channels < secondaries:
            continue
        out_channels = layer.out_channels - layer.out_channels % secondaries
        out.append((layer.name, count, VersatileSpec(batch, layer.in_channels, out_channels, layer.height,
                                                     layer.width, k, layer.stride, None, 1, delta, g, True, dtype,
                                                     channels_last)))
    return out


class VersatileAdapter(WeightBiasAdapter):
    operator = dispatch.Operator.of("versatile", kernels, launch, triton_unsupported=triton_unsupported)
    shape_sets = SHAPE_SETS
    specs_for = staticmethod(specs_for)
    parameter_layouts = {"weight": taps_major}  # the layer's own (VersatileConv2d keeps it taps-major)

    launch = launch
    reference = reference

    # The weight gradient in the weight's layout (taps-major for the layer's own): cuDNN's is copied there.
    def backward_weight(self, spec, t, grad, tile):
        return launch.backward_weight(grad, t["x"], spec, tile, weight=t["weight"])

    def fallback_backward(self, spec, t, grad, need_input, need_weights):
        dx, dw, db = super().fallback_backward(spec, t, grad, need_input, need_weights)
        return dx, in_grad_layout(dw, t["weight"]), db

    def weight_fan_in(self, spec: VersatileSpec) -> int:
        return spec.c_hat * spec.kernel_size**2

    def dense_window(self, spec: VersatileSpec) -> tuple[int, int, int, int]:
        """The ordinary k x k conv with the same channels, stride, padding and dilation."""
        return spec.kernel_size, spec.stride, spec.padding, spec.dilation

    def layer_call(self, t: dict, spec):
        return self.op.versatile_conv2d(t["x"], t["weight"], t["bias"], spec.out_channels, spec.stride, spec.padding,
                                        spec.dilation, spec.delta, spec.g)

    def shrink(self, spec: VersatileSpec) -> VersatileSpec:
        """Batch 2, 7x6 pixels, at most 6 seen channels and 2 primary filters: same k, stride, padding,
        dilation, delta and g."""
        dtype = "float32" if spec.dtype == "bfloat16" else spec.dtype  # bf16 is wrong in the interpreter
        span = spec.dilation * (spec.kernel_size - 1) + 1 - 2 * spec.padding
        return replace(spec, batch=2, in_channels=spec.delta + min(spec.c_hat, 6),
                       out_channels=spec.s_num * spec.n_c * min(spec.n_w, 2), height=max(min(spec.height, 7), span),
                       width=max(min(spec.width, 6), span), dtype=dtype)


ADAPTER = VersatileAdapter()
