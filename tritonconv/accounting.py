"""Analytic cost model: the work a layer must do and its compulsory memory traffic.

Every operator's spec exposes ``cost() -> Cost``; the tuner and the perf suite read FLOPs and bytes
from it, and ``count_macs`` sums it over a model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Cost:
    """``macs`` multiply-accumulates; ``bytes`` each input, weight and output moved once."""

    macs: int
    bytes: int

    @property
    def flops(self) -> int:
        return 2 * self.macs

    @property
    def intensity(self) -> float:
        """FLOPs per compulsory byte (the roofline's x axis)."""
        return self.flops / self.bytes if self.bytes else float("inf")


def _conv2d_macs(conv: nn.Conv2d, output: torch.Tensor) -> int:
    kh, kw = conv.kernel_size
    return output.numel() * (conv.in_channels // conv.groups) * kh * kw


def _linear_macs(linear: nn.Linear, output: torch.Tensor) -> int:
    return output.numel() * linear.in_features


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass of ``model`` on an input of ``input_shape``.

    Counts torch's ``nn.Conv2d`` and ``nn.Linear`` and every tritonconv layer (anything with a
    ``cost(input_shape)`` method); biases, normalisation and activations are not MACs. The model runs
    once in eval mode, on a random input on its parameters' device, through the fallback backend (only
    shapes matter); its training mode is restored.
    """

    if len(input_shape) < 1 or any(int(d) <= 0 for d in input_shape):
        raise ValueError(f"input_shape={tuple(input_shape)} must be a tuple of positive sizes")
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if hasattr(module, "cost"):
            total += module.cost(tuple(inputs[0].shape)).macs
        elif isinstance(module, nn.Conv2d):
            total += _conv2d_macs(module, output)
        elif isinstance(module, nn.Linear):
            total += _linear_macs(module, output)

    counted = [m for m in model.modules() if hasattr(m, "cost") or isinstance(m, (nn.Conv2d, nn.Linear))]
    # A tritonconv layer's own submodules (if any) are inside its cost already.
    inside_ours = {id(sub) for m in counted if hasattr(m, "cost") for sub in m.modules() if sub is not m}
    run_with_hooks(model, input_shape, [m for m in counted if id(m) not in inside_ours], hook)
    return total


def run_with_hooks(model: nn.Module, input_shape: tuple[int, ...], modules, hook) -> None:
    """Run ``model`` once with the forward ``hook`` on each of ``modules``: in eval mode, without grad,
    through the fallback backend (only shapes matter), on a random input of ``input_shape`` on the
    parameters' device and dtype. The training mode is restored and the hooks removed."""
    from tritonconv.dispatch import use_backend  # here, not at import: the cost model stays a leaf module

    handles = [module.register_forward_hook(hook) for module in modules]
    was_training = model.training
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    try:
        model.eval()
        with torch.no_grad(), use_backend("fallback"):
            model(torch.randn(*input_shape, device=device, dtype=dtype))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
