"""HetConv2d's harness for the tuner and the perf suite (see ``tritonconv.harness``)."""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from tritonconv import zoo
from tritonconv._validation import check_positive_int
from tritonconv.harness import Workload, in_layout
from tritonconv.ops.hetconv import launch, reference
from tritonconv.ops.hetconv.op import OPERATOR, hetconv2d
from tritonconv.ops.hetconv.spec import HetConvSpec


def _shape_set(name: str) -> list:
    sets = {"vgg16": lambda: zoo.vgg16(32) + zoo.vgg16(224), "vgg16_cifar": lambda: zoo.vgg16(32),
            "vgg16_imagenet": lambda: zoo.vgg16(224), "resnet50": lambda: zoo.resnet50(224)}
    if name not in sets:
        raise ValueError(f"shape set {name!r} is not known for hetconv; expected one of {tuple(sets)}")
    return sets[name]()


SHAPE_SETS = ("vgg16", "vgg16_cifar", "vgg16_imagenet", "resnet50")


def specs_for(shape_set, *, batch: int, dtype: str, channels_last: bool = False, p: int = 4) -> list:
    """(label, count, spec) for every conv of ``shape_set`` (a name or a list of ``zoo.ConvLayer``)
    that HetConv(p) can replace. The input conv (3 channels) and any conv whose channels p does not
    divide stay dense."""
    check_positive_int("p", p)
    layers = _shape_set(shape_set) if isinstance(shape_set, str) else list(shape_set)
    out = []
    for layer, count in zoo.unique(layers):
        if layer.in_channels % p or layer.out_channels % p or layer.in_channels == 3:
            continue
        spec = HetConvSpec(batch, layer.in_channels, layer.out_channels, layer.height, layer.width,
                           layer.kernel_size, layer.stride, p, False, dtype, channels_last)
        out.append((layer.name, count, spec))
    return out


class HetConvHarness:
    operator = OPERATOR
    shape_sets = SHAPE_SETS
    specs_for = staticmethod(specs_for)

    def make_workload(self, spec: HetConvSpec, device) -> Workload:
        def randn(*shape):
            return torch.randn(*shape, device=device, dtype=spec.torch_dtype)
        x = in_layout(randn(*spec.input_shape), spec.channels_last)
        scale = 1.0 / (spec.group_in * spec.kernel_size**2 + spec.in_channels - spec.group_in) ** 0.5
        tensors = {"x": x, "weight": randn(*spec.weight_shape) * scale,
                   "weight_pw": randn(*spec.weight_pw_shape) * scale,
                   "bias": randn(spec.out_channels) if spec.bias else None}
        return Workload(spec, tensors, in_layout(randn(*spec.output_shape), spec.channels_last))

    def candidate_tiles(self, spec, kernel):
        return launch.candidate_tiles(spec, kernel)

    def triton(self, kernel, work, tile):
        t, spec = work.tensors, work.spec
        if kernel == "forward":
            return lambda: (launch.forward(t["x"], t["weight"], t["weight_pw"], t["bias"], spec, tile),)
        if kernel == "backward_input":
            return lambda: (launch.backward_input(work.grad, t["weight"], t["weight_pw"], spec, tile, t["x"]),)
        return lambda: tuple(g for g in launch.backward_weight(work.grad, t["x"], spec, tile) if g is not None)

    def fallback(self, pass_, work):
        t, spec = work.tensors, work.spec
        if pass_ == "forward":
            return lambda: (reference.fallback_forward(t["x"], t["weight"], t["weight_pw"], t["bias"], spec),)
        return lambda: tuple(g for g in reference.fallback_backward(work.grad, t["x"], t["weight"], t["weight_pw"],
                                                                   spec, True, True) if g is not None)

    def expected(self, kernel, work):
        t = {k: v.double() if v is not None else None for k, v in work.tensors.items()}
        spec64 = replace(work.spec, dtype="float64")
        if kernel == "forward":
            return (reference.fallback_forward(t["x"], t["weight"], t["weight_pw"], t["bias"], spec64),)
        dx, dw, dpw, db = reference.fallback_backward(work.grad.double(), t["x"], t["weight"], t["weight_pw"], spec64,
                                                      kernel == "backward_input", kernel == "backward_weight")
        return (dx,) if kernel == "backward_input" else tuple(g for g in (dw, dpw, db) if g is not None)

    def dense(self, pass_, work):
        spec = work.spec
        t = work.tensors
        weight = torch.randn(spec.out_channels, spec.in_channels, spec.kernel_size, spec.kernel_size,
                             device=t["x"].device, dtype=t["x"].dtype) * 0.05
        weight = in_layout(weight, spec.channels_last)
        if pass_ == "forward":
            return lambda: (F.conv2d(t["x"], weight, t["bias"], spec.stride, spec.padding),)
        conv_bwd = torch.ops.aten.convolution_backward
        return lambda: tuple(g for g in conv_bwd(work.grad, t["x"], weight, [spec.out_channels] if spec.bias else None,
                                                 [spec.stride] * 2, [spec.padding] * 2, [1, 1], False, [0, 0], 1,
                                                 [True, True, spec.bias]) if g is not None)

    call_inputs = ("x", "weight", "weight_pw", "bias")

    def layer_call(self, t: dict, spec):
        return hetconv2d(t["x"], t["weight"], t["weight_pw"], t["bias"], spec.stride, spec.p)

    def shrink(self, spec: HetConvSpec) -> HetConvSpec:
        """Batch 2, at most 4 channels per group, 7x5 pixels: same p, k, stride, dtype family, layout."""
        dtype = "float32" if spec.dtype == "bfloat16" else spec.dtype  # bf16 is wrong in the interpreter
        return replace(spec, batch=2, in_channels=spec.p * min(spec.group_in, 4),
                       out_channels=spec.p * min(spec.group_out, 4), height=min(spec.height, 7),
                       width=min(spec.width, 5), dtype=dtype)


HARNESS = HetConvHarness()
