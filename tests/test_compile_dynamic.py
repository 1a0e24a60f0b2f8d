"""torch.compile with dynamic shapes: every layer's shape functions take symbolic sizes."""

import pytest
import torch

import tritonconv

from conftest import DEVICE

# name -> (layer factory, input channels)
LAYERS = {
    "hetconv": (lambda: tritonconv.HetConv2d(8, 8, 3, 1, 2, bias=True), 8),
    "dwsep": (lambda: tritonconv.DepthwiseSeparableConv2d(8, 8, 3, activation="relu"), 8),
    "depthwise": (lambda: tritonconv.DepthwiseConv2d(8, 3), 8),
    "shift": (lambda: tritonconv.ShiftConv2d(9, 8, 3), 9),
    "versatile": (lambda: tritonconv.VersatileConv2d(8, 8, 3), 8),
    "linearconv": (lambda: tritonconv.LinearConv2d(8, 8, 3, padding=1), 8),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_dynamic_shapes_forward_and_backward(name):
    torch.manual_seed(0)
    factory, channels = LAYERS[name]
    layer = factory().to(DEVICE)
    backend = "aot_eager" if DEVICE.type == "cpu" else "inductor"
    compiled = torch.compile(layer, fullgraph=True, dynamic=True, backend=backend)
    for batch, height, width in ((2, 5, 6), (3, 7, 4)):
        x = torch.randn(batch, channels, height, width, device=DEVICE, requires_grad=True)
        out = compiled(x)
        out.sum().backward()
        expected_x = x.detach().clone().requires_grad_(True)
        expected = layer(expected_x)
        expected.sum().backward()
        torch.testing.assert_close(out, expected)
        torch.testing.assert_close(x.grad, expected_x.grad)
