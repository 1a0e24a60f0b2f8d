"""The unfused cuDNN formulation of the depthwise-separable conv (MobileNet): the fallback and the
float64 oracle. cuDNN writes the whole depthwise intermediate and reads it back for the 1 x 1 conv."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tritonconv.ops.depthwise.reference import apply_activation
from tritonconv.ops.dwsep.spec import DwSepSpec


def fallback_forward(x, dw_weight, dw_bias, pw_weight, pw_bias, spec: DwSepSpec) -> torch.Tensor:
    h = apply_activation(F.conv2d(x, dw_weight, dw_bias, spec.stride, spec.padding, spec.dilation,
                                  groups=spec.in_channels), spec.activation)
    return apply_activation(F.conv2d(h, pw_weight, pw_bias), spec.out_activation)


def fallback_backward(dy, x, dw_weight, dw_bias, pw_weight, pw_bias, spec: DwSepSpec, need_input: bool,
                      need_weights: bool):
    """(dx, grad dw_weight, grad dw_bias, grad pw_weight, grad pw_bias) through cuDNN's backward."""
    with torch.enable_grad():
        x_ = x.detach().requires_grad_(need_input)
        params = [t.detach().requires_grad_(need_weights) if t is not None else None
                  for t in (dw_weight, dw_bias, pw_weight, pw_bias)]
        wanted = [t for t in (x_, *params) if t is not None and t.requires_grad]
        grads = iter(torch.autograd.grad(fallback_forward(x_, *params, spec), wanted, dy) if wanted else ())
    dx = next(grads) if need_input else None
    return (dx, *(next(grads) if t is not None and need_weights else None for t in params))


def intermediate_grad(dy, x, dw_weight, dw_bias, pw_weight, pw_bias, spec: DwSepSpec) -> torch.Tensor:
    """dz: the gradient of the depthwise pre-activation (what the backward's first kernel writes)."""
    with torch.enable_grad():
        z = F.conv2d(x.detach(), dw_weight.detach(), dw_bias.detach() if dw_bias is not None else None, spec.stride,
                     spec.padding, spec.dilation, groups=spec.in_channels).requires_grad_(True)
        y = apply_activation(F.conv2d(apply_activation(z, spec.activation), pw_weight.detach(),
                                      pw_bias.detach() if pw_bias is not None else None), spec.out_activation)
        return torch.autograd.grad(y, z, dy)[0]
