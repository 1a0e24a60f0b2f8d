"""The unfused cuDNN formulation of the depthwise-separable conv (MobileNet): the fallback and the
float64 oracle. cuDNN writes the whole depthwise intermediate and reads it back for the 1 x 1 conv."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tritonconv.ops.depthwise.reference import activation_backward, apply_activation
from tritonconv.ops.dwsep.spec import DwSepSpec


def fallback_forward(x, dw_weight, dw_bias, pw_weight, pw_bias, spec: DwSepSpec) -> torch.Tensor:
    h = apply_activation(F.conv2d(x, dw_weight, dw_bias, spec.stride, spec.padding, spec.dilation,
                                  groups=spec.in_channels), spec.activation)
    return apply_activation(F.conv2d(h, pw_weight, pw_bias), spec.out_activation)


def fallback_backward(dy, x, dw_weight, dw_bias, pw_weight, pw_bias, spec: DwSepSpec, need_input: bool,
                      need_weights: bool):
    """(dx, grad dw_weight, grad dw_bias, grad pw_weight, grad pw_bias) through cuDNN's backward.

    Written with explicit backward ops, not autograd: it runs inside a custom op, below autograd.
    """
    conv_bwd = torch.ops.aten.convolution_backward
    z = F.conv2d(x, dw_weight, dw_bias, spec.stride, spec.padding, spec.dilation, groups=spec.in_channels)
    h = apply_activation(z, spec.activation)
    dy = activation_backward(dy, F.conv2d(h, pw_weight, pw_bias), spec.out_activation)
    with_pw_bias = need_weights and pw_bias is not None
    dh, dpw, dpb = conv_bwd(dy, h, pw_weight, [spec.out_channels] if pw_bias is not None else None, [1, 1], [0, 0],
                            [1, 1], False, [0, 0], 1, [need_input or need_weights, need_weights, with_pw_bias])
    dz = activation_backward(dh, z, spec.activation)
    dx, ddw, ddb = conv_bwd(dz, x, dw_weight, [spec.in_channels] if dw_bias is not None else None,
                            [spec.stride] * 2, [spec.padding] * 2, [spec.dilation] * 2, False, [0, 0],
                            spec.in_channels, [need_input, need_weights, need_weights and dw_bias is not None])
    return dx, ddw, ddb, dpw, dpb


def intermediate_grad(dy, x, dw_weight, dw_bias, pw_weight, pw_bias, spec: DwSepSpec) -> torch.Tensor:
    """dz: the gradient of the depthwise pre-activation (what the backward's first kernel writes)."""
    with torch.enable_grad():
        z = F.conv2d(x.detach(), dw_weight.detach(), dw_bias.detach() if dw_bias is not None else None, spec.stride,
                     spec.padding, spec.dilation, groups=spec.in_channels).requires_grad_(True)
        y = apply_activation(F.conv2d(apply_activation(z, spec.activation), pw_weight.detach(),
                                      pw_bias.detach() if pw_bias is not None else None), spec.out_activation)
        return torch.autograd.grad(y, z, dy)[0]
