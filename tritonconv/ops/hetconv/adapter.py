"""HetConv2d's adapter for the tuner and the perf suite (see ``tritonconv.adapter``)."""

from __future__ import annotations

from dataclasses import replace

import torch

from tritonconv import dispatch, zoo
from tritonconv._layout import memory_format_of
from tritonconv._validation import check_positive_int
from tritonconv.adapter import Adapter, Workload, in_layout
from tritonconv.ops.hetconv import kernels, launch, reference
from tritonconv.ops.hetconv.spec import HetConvSpec, triton_unsupported


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


class HetConvAdapter(Adapter):
    operator = dispatch.Operator.of("hetconv", kernels, launch, triton_unsupported=triton_unsupported)
    shape_sets = SHAPE_SETS
    specs_for = staticmethod(specs_for)
    params = ("weight", "weight_pw", "bias")

    def forward(self, spec, t, tile):
        return launch.forward(t["x"], t["weight"], t["weight_pw"], t["bias"], spec, tile)

    def backward_input(self, spec, t, grad, tile):
        return launch.backward_input(grad, t["weight"], t["weight_pw"], spec, tile, t["x"])

    def backward_weight(self, spec, t, grad, tile):
        return launch.backward_weight(grad, t["x"], spec, tile, t["weight"])

    def fallback_forward(self, spec, t):
        return reference.fallback_forward(t["x"], t["weight"], t["weight_pw"], t["bias"], spec)

    def fallback_backward(self, spec, t, grad, need_input, need_weights):
        x = t["x"]
        dx, dw, dpw, db = reference.fallback_backward(grad.contiguous(memory_format=memory_format_of(x)), x,
                                                      t["weight"], t["weight_pw"], spec, need_input, need_weights)
        if dw is not None:  # in the kernels' layout, which the operator's fake promises
            dw = dw.contiguous(memory_format=launch.grad_weight_format(t["weight"]))
        return dx, dw, dpw, db

    def make_workload(self, spec: HetConvSpec, device) -> Workload:
        def randn(*shape):
            return torch.randn(*shape, device=device, dtype=spec.torch_dtype)
        x = in_layout(randn(*spec.input_shape), spec.channels_last)
        scale = 1.0 / (spec.group_in * spec.kernel_size**2 + spec.in_channels - spec.group_in) ** 0.5
        tensors = {"x": x, "weight": randn(*spec.weight_shape) * scale,
                   "weight_pw": randn(*spec.weight_pw_shape) * scale,
                   "bias": randn(spec.out_channels) if spec.bias else None}
        return Workload(spec, tensors, in_layout(randn(*spec.output_shape), spec.channels_last))

    def dense_window(self, spec: HetConvSpec) -> tuple[int, int, int, int]:
        """The ordinary k x k conv with the same channels and stride."""
        return spec.kernel_size, spec.stride, spec.padding, 1

    def layer_call(self, t: dict, spec):
        return self.op.hetconv2d(t["x"], t["weight"], t["weight_pw"], t["bias"], spec.stride, spec.p)

    def shrink(self, spec: HetConvSpec) -> HetConvSpec:
        """Batch 2, at most 4 channels per group, 7x5 pixels: same p, k, stride, dtype family, layout."""
        dtype = "float32" if spec.dtype == "bfloat16" else spec.dtype  # bf16 is wrong in the interpreter
        return replace(spec, batch=2, in_channels=spec.p * min(spec.group_in, 4),
                       out_channels=spec.p * min(spec.group_out, 4), height=min(spec.height, 7),
                       width=min(spec.width, 5), dtype=dtype)


ADAPTER = HetConvAdapter()
