"""RotFlipConv2d: the 8-transform bank, forward and gradients against float64 on both conv paths,
rotation equivariance, conversion, cost and bad input (SPEC section 6)."""

import pytest
import torch

from tritonconv import count_macs, use_backend
from tritonconv.ops.rotflip import RotFlipConv2d, reference

from conftest import DEVICE

TOLERANCE = 2e-3 if DEVICE.type == "cuda" else 1e-5


def relative_error(actual, expected):
    return ((actual.double() - expected).norm() / expected.norm().clamp_min(1e-30)).item()


def test_bank_order_and_transforms():
    w = torch.arange(9.0).reshape(1, 1, 3, 3)
    bank = reference.expand_bank(w)
    assert bank.shape == (8, 1, 3, 3)
    assert torch.equal(bank[0, 0], w[0, 0])
    assert torch.equal(bank[1, 0], torch.tensor([[2.0, 5, 8], [1, 4, 7], [0, 3, 6]]))  # counter-clockwise
    assert torch.equal(bank[4, 0], torch.tensor([[2.0, 1, 0], [5, 4, 3], [8, 7, 6]]))  # mirrored
    assert torch.equal(bank[5, 0], torch.rot90(bank[4, 0], 1))
    assert len({tuple(bank[t].flatten().tolist()) for t in range(8)}) == 8  # the 8 are distinct
    # stored filter f owns output channels f*8 ... f*8+7
    two = reference.expand_bank(torch.randn(2, 3, 3, 3))
    assert torch.equal(two[8 + 6], reference.transform(two[8], 6))


# (in, out, k, stride, padding, dilation, backend)
CASES = [
    (3, 16, 3, 2, 1, 1, "triton"),
    (2, 8, 5, 1, 2, 1, "triton"),
    (3, 8, 3, 1, 0, 1, "fallback"),  # padding 0
    (2, 8, 2, 1, 1, 2, "fallback"),  # even k, dilation 2
]


@pytest.mark.parametrize("case", CASES, ids=["triton_s2", "triton_k5", "cudnn_pad0", "cudnn_even_dilated"])
def test_forward_and_gradients_against_float64(case):
    c, o, k, stride, padding, dilation, backend = case
    torch.manual_seed(o + k + stride)
    layer = RotFlipConv2d(c, o, k, stride, padding, dilation).to(DEVICE)
    x = torch.randn(2, c, 7, 6, device=DEVICE, requires_grad=True)
    assert layer.explain(x).backend == backend
    y = layer(x)
    grad = torch.randn_like(y)
    y.backward(grad)
    x64 = x.detach().double().requires_grad_(True)
    w64, b64 = (t.detach().double().requires_grad_(True) for t in (layer.weight, layer.bias))
    y64 = reference.reference_forward(x64, w64, b64, stride, padding, dilation)
    y64.backward(grad.double())
    assert y.shape == y64.shape
    assert relative_error(y, y64) < TOLERANCE
    for got, want in ((x.grad, x64.grad), (layer.weight.grad, w64.grad), (layer.bias.grad, b64.grad)):
        assert relative_error(got, want) < TOLERANCE


def test_rotating_the_input_rotates_and_cycles_the_maps():
    torch.manual_seed(1)
    layer = RotFlipConv2d(2, 16, 3, padding=1, bias=False).to(DEVICE)
    x = torch.randn(1, 2, 6, 6, device=DEVICE)
    y, y_rot = layer(x), layer(torch.rot90(x, 1, dims=(-2, -1)))
    for f in range(2):
        for mirror in range(2):
            for rotation in range(4):
                out = f * 8 + mirror * 4 + rotation
                src = f * 8 + mirror * 4 + (rotation - 1) % 4
                torch.testing.assert_close(y_rot[:, out], torch.rot90(y[:, src], 1, dims=(-2, -1)),
                                           rtol=1e-5, atol=1e-5)


def test_parameters_cost_and_conversion():
    layer = RotFlipConv2d(4, 24, 3, padding=1)
    assert layer.weight.shape == (3, 4, 3, 3)
    assert sum(t.numel() for t in layer.parameters()) == 3 * 4 * 9 + 24
    shape = (2, 4, 6, 6)
    assert layer.cost(shape).macs == count_macs(torch.nn.Conv2d(4, 24, 3, padding=1), shape) == 2 * 36 * 24 * 36

    conv = torch.nn.Conv2d(4, 24, 3, padding=1)
    stored = torch.randn(3, 4, 3, 3)
    with torch.no_grad():
        conv.weight.copy_(reference.expand_bank(stored))
    back = RotFlipConv2d.from_conv2d(conv)
    torch.testing.assert_close(back.weight, stored)  # exact when the conv already is a rot/flip bank
    x = torch.randn(1, 4, 5, 5)
    with use_backend("fallback"):
        torch.testing.assert_close(back(x), conv(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="out_channels=12 must be a multiple of 8"):
        RotFlipConv2d.from_conv2d(torch.nn.Conv2d(4, 12, 3))
    with pytest.raises(ValueError, match="groups=2"):
        RotFlipConv2d.from_conv2d(torch.nn.Conv2d(4, 16, 3, groups=2))


@pytest.mark.parametrize("kwargs, match", [
    (dict(out_channels=12), "out_channels=12 must be a multiple of 8"),
    (dict(kernel_size=0), "kernel_size=0"),
    (dict(stride=0), "stride=0"),
    (dict(padding=-1), "padding=-1"),
    (dict(in_channels=2.5), "in_channels=2.5"),
])
def test_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RotFlipConv2d(**(dict(in_channels=3, out_channels=8, kernel_size=3) | kwargs))


def test_bad_inputs_and_empty_batch():
    layer = RotFlipConv2d(3, 8, 3, padding=1).to(DEVICE)
    with pytest.raises(ValueError, match="input has 2 channels .* expected in_channels=3"):
        layer(torch.randn(1, 2, 4, 4, device=DEVICE))
    with pytest.raises(TypeError, match="input has dtype int64"):
        layer(torch.ones(1, 3, 4, 4, device=DEVICE, dtype=torch.int64))
    with pytest.raises(TypeError, match="input must be a torch.Tensor"):
        layer([1.0])
    assert layer(torch.randn(0, 3, 4, 4, device=DEVICE)).shape == (0, 8, 4, 4)
