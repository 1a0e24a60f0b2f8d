"""The depthwise conv's adapter for the tuner and the perf suite (see ``tritonconv.adapter``).

``DepthwiseAdapter`` drives the standalone depthwise conv; ``ghost.adapter`` reuses it for the Ghost
module's cheap operation (the same operator and kernels, ``concat_input=True``).
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from tritonconv import dispatch
from tritonconv._layout import empty_like_layout
from tritonconv.adapter import Adapter, Workload
from tritonconv.ops.depthwise import kernels, launch, reference
from tritonconv.ops.depthwise.layout import in_grad_layout, taps_major
from tritonconv.ops.depthwise.spec import DepthwiseSpec, triton_unsupported
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


class DepthwiseAdapter(Adapter):
    """Tensors: ``x``, ``weight``, ``bias`` and ``out``, the forward's output (the backward masks dy by the
    activation through it)."""

    operator = dispatch.Operator.of("depthwise", kernels, launch, triton_unsupported=triton_unsupported)
    shape_sets = SHAPE_SETS
    specs_for = staticmethod(specs_for)
    # How a layer lays out each parameter again after model.to(memory_format=...) (see perf.host).
    parameter_layouts = {"weight": taps_major}

    def forward(self, spec, t, tile):
        return launch.forward(t["x"], t["weight"], t["bias"], spec, tile)

    @staticmethod
    def _maps(spec: DepthwiseSpec, t: dict, grad):
        """(dy of the maps, the maps, dy of the copied input or None): the input copy leads a Ghost output."""
        channels = spec.in_channels if spec.concat_input else 0
        return grad[:, channels:], t["out"][:, channels:], grad[:, :channels] if spec.concat_input else None

    def backward_input(self, spec, t, grad, tile):
        maps_grad, maps, add = self._maps(spec, t, grad)
        return launch.backward_input(maps_grad, maps, t["weight"], spec, tile, t["x"], add=add)

    def backward_weight(self, spec, t, grad, tile):
        maps_grad, maps, _ = self._maps(spec, t, grad)
        return launch.backward_weight(maps_grad, maps, t["x"], spec, tile, weight=t["weight"])

    def backward(self, spec, t, grad, tiles, need_input, need_weights):
        if not (need_weights and need_input and spec.activation != "none"):
            return super().backward(spec, t, grad, tiles, need_input, need_weights)
        # The weight gradient masks dy by the activation anyway: it writes that dz for the input gradient
        # too, which then needs no masking launch of its own.
        x, weight = t["x"], t["weight"]
        maps_grad, maps, add = self._maps(spec, t, grad)
        dz = empty_like_layout((spec.batch, spec.out_channels, spec.out_height, spec.out_width), x, dtype=grad.dtype)
        dw, db = launch.backward_weight(maps_grad, maps, x, spec, tiles["backward_weight"], grad_out=dz,
                                        weight=weight)
        dx = launch.backward_input(dz, dz, weight, spec, tiles["backward_input"], x, activation="none", add=add)
        return dx, dw, db

    def fallback_forward(self, spec, t):
        return reference.fallback_forward(t["x"], t["weight"], t["bias"], spec)

    def fallback_backward(self, spec, t, grad, need_input, need_weights):
        weight = t["weight"]
        dx, dw, db = reference.fallback_backward(grad, t["x"], weight, t["bias"], spec, need_input, need_weights)
        return dx, in_grad_layout(dw, weight), db

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

    def layer_call(self, t: dict, spec):
        return self.op.depthwise_conv2d(t["x"], t["weight"], t["bias"], spec.stride, spec.padding, spec.dilation,
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


ADAPTER = DepthwiseAdapter()
