"""The depthwise conv's harness for the tuner and the perf suite (see ``tritonconv.harness``).

``DepthwiseHarness`` drives the standalone depthwise conv; ``ghost.harness`` reuses it for the Ghost
module's cheap operation (the same operator and kernels, ``concat_input=True``).
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from tritonconv.harness import Workload
from tritonconv.ops.depthwise import launch, reference
from tritonconv.ops.depthwise.layout import taps_major
from tritonconv.ops.depthwise.op import OPERATOR, depthwise_conv2d
from tritonconv.ops.depthwise.spec import DepthwiseSpec
from tritonconv.zoo import separable

_SETS = {"mobilenet_v2": lambda: separable.mobilenet_v2(224), "ghostnet": lambda: separable.ghostnet_separable(224),
         "efficientnet_b0": lambda: separable.efficientnet_b0(224)}
SHAPE_SETS = tuple(_SETS)


def specs_for(shape_set: str, *, batch: int, dtype: str, channels_last: bool = False) -> list:
    """(label, count, spec) for every depthwise conv of ``shape_set`` (BN folded into its bias): MobileNetV2's
    (ReLU6 fused), GhostNet's stride-2 ``conv_dw`` and shortcut depthwise convs, EfficientNet-B0's
    MBConv depthwise convs (3 x 3 and 5 x 5, their SiLU not fused)."""
    if shape_set not in _SETS:
        raise ValueError(f"shape set {shape_set!r} is not known for depthwise; expected one of {SHAPE_SETS}")
    out = []
    for layer, count in separable.unique(_SETS[shape_set]()):
        spec = DepthwiseSpec(batch, layer.in_channels, layer.in_channels, layer.height, layer.width,
                             layer.kernel_size, layer.stride, layer.kernel_size // 2, 1, 1, True, layer.activation,
                             dtype, channels_last)
        out.append((layer.name, count, spec))
    return out


class DepthwiseHarness:
    operator = OPERATOR
    shape_sets = SHAPE_SETS
    specs_for = staticmethod(specs_for)
    # How a layer lays out each parameter again after model.to(memory_format=...) (see perf.host).
    parameter_layouts = {"weight": taps_major}

    def make_workload(self, spec: DepthwiseSpec, device) -> Workload:
        def randn(*shape):
            return torch.randn(*shape, device=device, dtype=spec.torch_dtype)
        x = randn(*spec.input_shape)
        if spec.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        # The weight as the layers hold it (taps-major), so that what is measured is a layer's call.
        tensors = {"x": x, "weight": taps_major(randn(*spec.weight_shape) / spec.kernel_size),
                   "bias": randn(spec.out_channels) if spec.bias else None}
        # The forward output: the backward kernels read it for the activation's mask.
        tensors["out"] = reference.fallback_forward(x, tensors["weight"], tensors["bias"], spec).contiguous(
            memory_format=torch.channels_last if spec.channels_last else torch.contiguous_format)
        grad = randn(*spec.output_shape)
        if spec.channels_last:
            grad = grad.contiguous(memory_format=torch.channels_last)
        return Workload(spec, tensors, grad)

    def candidate_tiles(self, spec, kernel):
        return launch.candidate_tiles(spec, kernel)

    def triton(self, kernel, work, tile):
        t, spec = work.tensors, work.spec
        offset = spec.in_channels if spec.concat_input else 0
        maps_grad, maps = work.grad[:, offset:], t["out"][:, offset:]
        if kernel == "forward":
            return lambda: (launch.forward(t["x"], t["weight"], t["bias"], spec, tile),)
        if kernel == "backward_input":
            add = work.grad[:, :offset] if spec.concat_input else None
            return lambda: (launch.backward_input(maps_grad, maps, t["weight"], spec, tile, t["x"], add=add),)
        return lambda: tuple(g for g in launch.backward_weight(maps_grad, maps, t["x"], spec, tile) if g is not None)

    def fallback(self, pass_, work):
        t, spec = work.tensors, work.spec
        if pass_ == "forward":
            return lambda: (reference.fallback_forward(t["x"], t["weight"], t["bias"], spec),)
        return lambda: tuple(g for g in reference.fallback_backward(work.grad, t["x"], t["weight"], t["bias"], spec,
                                                                   True, True) if g is not None)

    def expected(self, kernel, work):
        t = {k: v.double() if v is not None else None for k, v in work.tensors.items()}
        spec64 = replace(work.spec, dtype="float64")
        if kernel == "forward":
            return (reference.fallback_forward(t["x"], t["weight"], t["bias"], spec64),)
        dx, dw, db = reference.fallback_backward(work.grad.double(), t["x"], t["weight"], t["bias"], spec64,
                                                 kernel == "backward_input", kernel == "backward_weight")
        return (dx,) if kernel == "backward_input" else tuple(g for g in (dw, db) if g is not None)

    def dense(self, pass_, work):
        """The ordinary k x k conv with as many input and output channels."""
        spec, x = work.spec, work.tensors["x"]
        weight = torch.randn(spec.out_channels, spec.in_channels, spec.kernel_size, spec.kernel_size,
                             device=x.device, dtype=x.dtype) / (spec.kernel_size * spec.in_channels**0.5)
        args = (spec.stride, spec.padding, spec.dilation)
        if pass_ == "forward":
            return lambda: (F.conv2d(x, weight, None, *args),)
        grad = work.grad[:, spec.in_channels:] if spec.concat_input else work.grad
        conv_bwd = torch.ops.aten.convolution_backward
        return lambda: tuple(g for g in conv_bwd(grad, x, weight, None, [spec.stride] * 2, [spec.padding] * 2,
                                                 [spec.dilation] * 2, False, [0, 0], 1, [True, True, False])
                             if g is not None)

    call_inputs = ("x", "weight", "bias")

    def layer_call(self, t: dict, spec):
        return depthwise_conv2d(t["x"], t["weight"], t["bias"], spec.stride, spec.padding, spec.dilation,
                                spec.activation)

    def shrink(self, spec: DepthwiseSpec) -> DepthwiseSpec:
        """Batch 2, at most 8 input channels, 7x5 pixels: same window, multiplier, activation and layout."""
        dtype = "float32" if spec.dtype == "bfloat16" else spec.dtype  # bf16 is wrong in the interpreter
        in_channels = min(spec.in_channels, 8)
        out_channels = min(spec.out_channels, in_channels * spec.multiplier)
        if not spec.concat_input:
            out_channels = in_channels * spec.multiplier
        return replace(spec, batch=2, in_channels=in_channels, out_channels=out_channels,
                       height=min(spec.height, 7), width=min(spec.width, 5), dtype=dtype)


HARNESS = DepthwiseHarness()
