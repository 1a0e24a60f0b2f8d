"""The fused depthwise-separable conv's adapter for the tuner and the perf suite (see ``tritonconv.adapter``)."""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from tritonconv import dispatch
from tritonconv.adapter import Adapter, Workload
from tritonconv.ops.depthwise import kernels as depthwise_kernels
from tritonconv.ops.depthwise import launch as depthwise_launch
from tritonconv.ops.depthwise.layout import in_grad_layout, taps_major
from tritonconv.ops.dwsep import kernels, launch, reference
from tritonconv.ops.dwsep.spec import DwSepSpec, triton_unsupported
from tritonconv.zoo import separable

_SETS = {"mobilenet_v2": lambda: separable.mobilenet_v2(224),
         "ghostnet": lambda: [layer for layer in separable.ghostnet_separable(224) if layer.out_channels is not None],
         "efficientnet_b0": lambda: separable.efficientnet_b0(224)}
SHAPE_SETS = tuple(_SETS)


def specs_for(shape_set: str, *, batch: int, dtype: str, channels_last: bool = False) -> list:
    """(label, count, spec) for every depthwise + pointwise pair of ``shape_set`` (BN folded into the biases):
    MobileNetV2's depthwise + project convs (ReLU6 between, linear output), GhostNet's shortcut pairs,
    EfficientNet-B0's MBConv depthwise + project convs as shapes (``separable.efficientnet_b0``)."""
    if shape_set not in _SETS:
        raise ValueError(f"shape set {shape_set!r} is not known for dwsep; expected one of {SHAPE_SETS}")
    out = []
    for layer, count in separable.unique(_SETS[shape_set]()):
        spec = DwSepSpec(batch, layer.in_channels, layer.out_channels, layer.height, layer.width, layer.kernel_size,
                         layer.stride, layer.kernel_size // 2, 1, True, True, layer.activation, layer.out_activation,
                         dtype, channels_last)
        out.append((layer.name, count, spec))
    return out


_PARAMS = ("dw_weight", "dw_bias", "pw_weight", "pw_bias")


class DwSepAdapter(Adapter):
    """Tensors: ``x``, the four parameters, ``out`` (the forward's output: out_activation's mask) and, for
    the depthwise backward kernels measured alone, ``dz`` (backward_pointwise's first output)."""

    # The depthwise backward kernels' tiles are depthwise's: its launcher is hashed too.
    operator = dispatch.Operator.of(
        "dwsep", kernels, launch, depthwise_kernels, depthwise_launch, triton_unsupported=triton_unsupported,
        kernels_of_pass={"forward": ("forward",),
                         "backward": ("backward_pointwise", "backward_input", "backward_weight")})
    shape_sets = SHAPE_SETS
    specs_for = staticmethod(specs_for)
    params = _PARAMS
    # How the layer lays out each parameter again after model.to(memory_format=...) (see perf.host).
    parameter_layouts = {"dw_weight": taps_major}

    def forward(self, spec, t, tile):
        return launch.forward(t["x"], *(t[name] for name in _PARAMS), spec, tile)

    def backward(self, spec, t, grad, tiles, need_input, need_weights):
        """Three launches (see ``launch.backward``); grad dw_weight with dw_weight's strides."""
        dx, ddw, *rest = launch.backward(grad, t["out"], t["x"], t["dw_weight"], t["dw_bias"], t["pw_weight"], spec,
                                         tiles, need_input, need_weights)
        return dx, in_grad_layout(ddw, t["dw_weight"]), *rest

    def run_kernel(self, kernel, spec, t, grad, tile):
        """The backward's kernels one at a time: ``backward_pointwise`` (dz and the pointwise gradients),
        then the depthwise backward, one launch for grad input and the grad-weight partials (each kernel is
        measured in it at its tile, the other at its default), and the partials' reduction."""
        if kernel == "forward":
            return (self.forward(spec, t, tile),)
        if kernel == "backward_pointwise":
            return tuple(g for g in launch.backward_pointwise(grad, t["out"], t["x"], t["dw_weight"], t["dw_bias"],
                                                              t["pw_weight"], spec, tile) if g is not None)
        tiles = {"backward_input": launch.default_tile(spec, "backward_input"),
                 "backward_weight": launch.default_tile(spec, "backward_weight"), kernel: tile}
        dx, partials = launch.backward_depthwise(t["dz"], t["x"], taps_major(t["dw_weight"]), spec,
                                                 tiles["backward_input"], tiles["backward_weight"], True, True)
        if kernel == "backward_input":
            return (dx,)
        return tuple(g for g in launch.reduce_partials(t["x"], t["dw_weight"], spec, None, partials)[:2]
                     if g is not None)

    def fallback_forward(self, spec, t):
        return reference.fallback_forward(t["x"], *(t[name] for name in _PARAMS), spec)

    def fallback_backward(self, spec, t, grad, need_input, need_weights):
        dx, ddw, *rest = reference.fallback_backward(grad, t["x"], *(t[name] for name in _PARAMS), spec, need_input,
                                                     need_weights)
        return dx, in_grad_layout(ddw, t["dw_weight"]), *rest

    def make_workload(self, spec: DwSepSpec, device) -> Workload:
        def randn(*shape):
            return torch.randn(*shape, device=device, dtype=spec.torch_dtype)
        memory_format = torch.channels_last if spec.channels_last else torch.contiguous_format
        x = randn(*spec.input_shape).contiguous(memory_format=memory_format)
        # dw_weight as the layer holds it (taps-major), so that what is measured is a layer's call.
        t = {"x": x, "dw_weight": taps_major(randn(*spec.dw_weight_shape) / spec.kernel_size),
             "dw_bias": randn(spec.in_channels) if spec.dw_bias else None,
             "pw_weight": randn(*spec.pw_weight_shape) / spec.in_channels**0.5,
             "pw_bias": randn(spec.out_channels) if spec.pw_bias else None}
        grad = randn(*spec.output_shape).contiguous(memory_format=memory_format)
        params = [t[name] for name in _PARAMS]
        # What the backward kernels read besides dy: the forward output (out_activation's mask) and, for
        # the depthwise backward kernels measured alone, dz (backward_pointwise's first output).
        t["out"] = reference.fallback_forward(x, *params, spec).contiguous(memory_format=memory_format)
        t["dz"] = reference.intermediate_grad(grad, x, *params, spec).contiguous(memory_format=memory_format)
        return Workload(spec, t, grad)

    def expected(self, kernel, work):
        """``run_kernel``'s outputs in float64: backward_weight is the depthwise weight's gradients only."""
        if kernel in ("forward", "backward_input"):
            return super().expected(kernel, work)
        work64 = work.float64()
        t, spec64, dy = work64.tensors, work64.spec, work64.grad
        params = [t[name] for name in _PARAMS]
        _, ddw, ddb, dpw, dpb = reference.fallback_backward(dy, t["x"], *params, spec64, False, True)
        if kernel == "backward_weight":
            return tuple(g for g in (ddw, ddb) if g is not None)
        dz = reference.intermediate_grad(dy, t["x"], *params, spec64)
        return tuple(g for g in (dz, dpw, dpb) if g is not None)

    def dense(self, pass_, work):
        """The ordinary k x k conv C -> N of the same shape (what the layer replaces)."""
        spec, x = work.spec, work.tensors["x"]
        weight = torch.randn(spec.out_channels, spec.in_channels, spec.kernel_size, spec.kernel_size,
                             device=x.device, dtype=x.dtype) / (spec.kernel_size * spec.in_channels**0.5)
        if spec.channels_last:
            weight = weight.contiguous(memory_format=torch.channels_last)
        if pass_ == "forward":
            return lambda: (F.conv2d(x, weight, work.tensors["pw_bias"], spec.stride, spec.padding, spec.dilation),)
        conv_bwd = torch.ops.aten.convolution_backward
        return lambda: tuple(g for g in conv_bwd(work.grad, x, weight, [spec.out_channels] if spec.pw_bias else None,
                                                 [spec.stride] * 2, [spec.padding] * 2, [spec.dilation] * 2, False,
                                                 [0, 0], 1, [True, True, spec.pw_bias]) if g is not None)

    def layer_call(self, t: dict, spec):
        return self.op.dwsep_conv2d(t["x"], t["dw_weight"], t["dw_bias"], t["pw_weight"], t["pw_bias"], spec.stride,
                                    spec.padding, spec.dilation, spec.activation, spec.out_activation)

    def shrink(self, spec: DwSepSpec) -> DwSepSpec:
        """Batch 2, at most 24 in and 20 out channels, 7x5 pixels: same window, activations and layout."""
        dtype = "float32" if spec.dtype == "bfloat16" else spec.dtype  # bf16 is wrong in the interpreter
        return replace(spec, batch=2, in_channels=min(spec.in_channels, 24), out_channels=min(spec.out_channels, 20),
                       height=min(spec.height, 7), width=min(spec.width, 5), dtype=dtype)


ADAPTER = DwSepAdapter()
