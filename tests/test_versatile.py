"""VersatileConv2d (SPEC section 4): Triton forward and gradients against the float64 published
formulation (one conv per secondary filter + torch.cat)."""

import pytest
import torch
import torch.nn.functional as F

from tritonconv.dispatch import use_backend
from tritonconv.ops.versatile import VersatileConv2d, VersatileSpec, reference
from tritonconv.ops.versatile.adapter import ADAPTER

from conftest import DEVICE


def _oracle(layer: VersatileConv2d, x: torch.Tensor) -> torch.Tensor:
    return reference.fallback_forward(x, layer.weight, layer.bias, layer.spec(x.shape, x.dtype))


def _check(layer, x, tol=1e-10):
    layer.zero_grad()
    x = x.detach().requires_grad_()
    y = layer(x)
    grad = torch.randn_like(y)
    y.backward(grad)
    ours = [x.grad] + [p.grad for p in layer.parameters()]
    x_ref = x.detach().clone().requires_grad_()
    layer.zero_grad()
    _oracle(layer, x_ref).backward(grad)
    torch.testing.assert_close(y, _oracle(layer, x_ref).detach(), atol=tol, rtol=tol)
    for got, want in zip(ours, [x_ref.grad] + [p.grad for p in layer.parameters()]):
        torch.testing.assert_close(got, want, atol=tol, rtol=tol)
    return y


def test_secondaries_are_the_primary_with_rings_zeroed():
    weight = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    secondaries = reference.secondary_weights(weight)
    assert torch.equal(secondaries[:2], weight)
    assert secondaries[2:4, :, [0, 4]].abs().sum() == 0 and secondaries[2:4, :, :, [0, 4]].abs().sum() == 0
    assert torch.equal(secondaries[2:4, :, 1:4, 1:4], weight[:, :, 1:4, 1:4])
    centre_only = torch.zeros_like(weight)
    centre_only[:, :, 2, 2] = weight[:, :, 2, 2]
    assert torch.equal(secondaries[4:], centre_only)


@pytest.mark.parametrize("in_c,out_c,h,w,k,stride,padding,dilation,delta,g,bias", [
    (6, 6, 7, 5, 3, 1, None, 1, 0, 1, True),     # H != W
    (10, 18, 6, 7, 5, 2, 1, 1, 4, 2, True),      # channel offsets, stride, padding < s_num - 1
    (9, 8, 5, 6, 3, 1, 0, 2, 1, 1, False),       # dilation, no padding, no bias
    (5, 8, 6, 6, 7, 1, None, 1, 0, 1, True),     # k = 7: four secondaries
    (20, 12, 4, 5, 3, 1, 3, 1, 2, 1, True),      # padding beyond the window, 3 offsets
    (128, 128, 7, 6, 3, 1, None, 1, 0, 1, True),  # whole 16-byte chunks: c_hat 2 chunks, n_w 2 chunks
    (80, 42, 6, 5, 5, 2, None, 1, 0, 1, True),    # c_hat past one chunk, n_w = 14 (2-byte columns)
])
def test_forward_and_gradients_float64(in_c, out_c, h, w, k, stride, padding, dilation, delta, g, bias):
    torch.manual_seed(0)
    layer = VersatileConv2d(in_c, out_c, k, stride, padding, dilation, bias, delta, g, device=DEVICE,
                            dtype=torch.float64)
    y = _check(layer, torch.randn(2, in_c, h, w, device=DEVICE, dtype=torch.float64))
    assert y.shape == layer.spec((2, in_c, h, w)).output_shape


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float16, 5e-3)])
def test_low_precision_forward(dtype, tol):
    layer = VersatileConv2d(8, 12, 5, delta=2, g=2, device=DEVICE, dtype=dtype)
    x = torch.randn(2, 8, 5, 6, device=DEVICE, dtype=dtype)
    with torch.no_grad():
        want = _oracle(layer.double(), x.double())
        got = layer.to(dtype)(x)
    torch.testing.assert_close(got.double(), want, atol=tol, rtol=tol)


def test_output_channel_order():
    """o = (s*n_c + j)*n_w + f: check one channel of each kind by hand."""
    layer = VersatileConv2d(6, 12, 3, delta=2, g=2, device=DEVICE, dtype=torch.float64)  # s_num 2, n_c 2, n_w 3
    x = torch.randn(1, 6, 5, 5, device=DEVICE, dtype=torch.float64)
    with torch.no_grad():
        y = layer(x)
        s, j, f = 1, 1, 2
        centre = torch.zeros_like(layer.weight[f:f + 1])
        centre[..., 1, 1] = layer.weight[f:f + 1, :, 1, 1]
        want = F.conv2d(x[:, 2:6], centre, layer.bias[(s * 2 + j) * 3 + f:][:1], padding=1)
    torch.testing.assert_close(y[:, (s * 2 + j) * 3 + f:][:, :1], want)


def test_channels_last_and_non_contiguous_inputs():
    layer = VersatileConv2d(6, 6, 3, stride=2, device=DEVICE, dtype=torch.float64)
    y = _check(layer, torch.randn(2, 6, 7, 6, device=DEVICE, dtype=torch.float64).contiguous(
        memory_format=torch.channels_last))
    assert y.is_contiguous(memory_format=torch.channels_last)
    _check(layer, torch.randn(2, 6, 7, 6, device=DEVICE, dtype=torch.float64).permute(0, 1, 3, 2))


def test_triton_and_fallback_agree():
    layer = VersatileConv2d(7, 12, 3, delta=1, device=DEVICE, dtype=torch.float64)
    x = torch.randn(2, 7, 5, 4, device=DEVICE, dtype=torch.float64, requires_grad=True)
    results = []
    for backend in ("triton", "fallback"):
        x.grad = None
        layer.zero_grad()
        with use_backend(backend):
            y = layer(x)
            y.backward(torch.ones_like(y))
        results.append((y.detach(), x.grad, layer.weight.grad, layer.bias.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)
    assert layer.explain(x, "backward").backend == "triton"


def test_batch_zero():
    layer = VersatileConv2d(4, 6, 5, device=DEVICE)
    x = torch.randn(0, 4, 5, 5, device=DEVICE, requires_grad=True)
    y = layer(x)
    assert y.shape == (0, 6, 5, 5)
    y.sum().backward()
    assert x.grad.shape == x.shape and layer.weight.grad.abs().sum() == 0


@pytest.mark.parametrize("kwargs,words", [
    (dict(in_channels=8, out_channels=10, kernel_size=5), "out_channels=10 must be a multiple of s_num"),
    (dict(in_channels=8, out_channels=12, kernel_size=3, delta=3, g=2), "g=2 must divide delta=3"),
    (dict(in_channels=8, out_channels=12, kernel_size=3, delta=8), "delta=8 must be smaller"),
    (dict(in_channels=8, out_channels=12, kernel_size=3, padding=-1), "padding=-1"),
    (dict(in_channels=8, out_channels=12, kernel_size=3, g=0), "g=0"),
    (dict(in_channels=8, out_channels=10, kernel_size=0), "kernel_size=0"),  # k=9 is valid: the fallback runs it
])
def test_divisibility_and_hyperparameters_are_checked(kwargs, words):
    with pytest.raises(ValueError, match=words):
        VersatileConv2d(**kwargs)


@pytest.mark.parametrize("call,error,words", [
    (lambda m: m(torch.randn(8, 5, 5)), ValueError, "input must have 4 dimensions"),
    (lambda m: m(torch.randn(1, 7, 5, 5)), ValueError, "input has 7 channels"),
    (lambda m: m(torch.ones(1, 8, 5, 5, dtype=torch.int32)), TypeError, "dtype int32"),
    (lambda m: m(torch.randn(1, 8, 1, 1)), ValueError, "smaller than the dilated kernel"),
    (lambda m: m([1.0]), TypeError, "torch.Tensor"),
])
def test_bad_input_is_refused_clearly(call, error, words):
    with pytest.raises(error, match=words):
        call(VersatileConv2d(8, 12, 5, padding=0))


def test_original_checkpoint_loader():
    """The original stores [n_w, C, k, k] and computes each secondary on channels [j g, j g + C - delta)."""
    torch.manual_seed(1)
    n_w, C, k, delta, g = 2, 7, 5, 2, 1
    original = torch.randn(n_w, C, k, k, dtype=torch.float64, device=DEVICE)
    bias = torch.randn(3 * 3 * n_w, dtype=torch.float64, device=DEVICE)
    x = torch.randn(2, C, 6, 6, dtype=torch.float64, device=DEVICE)
    outs = []
    for s in range(3):
        masked = torch.zeros_like(original)
        masked[:, :, s:k - s, s:k - s] = original[:, :, s:k - s, s:k - s]
        for j in range(delta // g + 1):
            outs.append(F.conv2d(x[:, j * g:j * g + C - delta], masked[:, :C - delta], None, 1, 2))
    want = torch.cat(outs, 1) + bias[None, :, None, None]
    layer = VersatileConv2d.from_original(original, bias, out_channels=18, delta=delta, g=g)
    assert layer.weight.shape == (n_w, C - delta, k, k)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), want)
    with pytest.raises(ValueError, match="weight has shape"):
        VersatileConv2d.from_original(original, None, out_channels=36, delta=delta, g=g)


def test_spec_cost_matches_the_spec():
    spec = VersatileSpec(1, 16, 18, 8, 8, kernel_size=5, delta=2, g=1)
    assert (spec.s_num, spec.n_c, spec.n_w, spec.c_hat) == (3, 3, 2, 14)
    assert spec.cost().macs == 64 * 2 * 3 * 14 * 35
    assert VersatileSpec(1, 8, 8, 4, 4, kernel_size=7).cost().macs == 16 * 2 * 8 * 84


def test_torch_compile_fullgraph_forward_and_backward():
    torch._dynamo.reset()
    layer = VersatileConv2d(4, 8, 3, delta=1, device=DEVICE, dtype=torch.float64)
    compiled = torch.compile(layer, fullgraph=True,
                             backend="aot_eager" if DEVICE.type == "cpu" else "inductor")
    x = torch.randn(1, 4, 4, 5, device=DEVICE, dtype=torch.float64, requires_grad=True)
    y = compiled(x)
    y.sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    grad_w = layer.weight.grad.clone()
    layer.zero_grad()
    want = _oracle(layer, x_ref)
    want.sum().backward()
    torch.testing.assert_close(y, want)
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(grad_w, layer.weight.grad)


def test_opcheck():
    layer = VersatileConv2d(4, 8, 3, delta=1, device=DEVICE, dtype=torch.float64)
    x = torch.randn(1, 4, 4, 5, device=DEVICE, dtype=torch.float64, requires_grad=True)
    args = (x, layer.weight, layer.bias, [8, 1, 1, 1, 1, 1])
    torch.library.opcheck(torch.ops.tritonconv.versatile_conv2d.default, args,
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def test_adapter_shape_sets_and_shrunk_kernels():
    from tritonconv.adapter import max_relative_error
    assert all(spec.kernel_size == 3 for _, _, spec in ADAPTER.specs_for("vgg16", batch=2, dtype="float32"))
    _, _, spec = ADAPTER.specs_for("resnet50", batch=4, dtype="float32")[-1]
    assert spec.kernel_size == 5 and spec.out_channels % 3 == 0
    work = ADAPTER.make_workload(ADAPTER.shrink(spec), DEVICE)
    for kernel in ("forward", "backward_input", "backward_weight"):
        tile = ADAPTER.candidate_tiles(work.spec, kernel)[0]
        assert max_relative_error(ADAPTER.triton(kernel, work, tile)(), ADAPTER.expected(kernel, work)) < 1e-4


@pytest.mark.gpu
def test_bfloat16_on_gpu():
    layer = VersatileConv2d(64, 63, 5, device=DEVICE, dtype=torch.bfloat16)
    x = torch.randn(4, 64, 28, 28, device=DEVICE, dtype=torch.bfloat16)
    with torch.no_grad():
        got = layer(x).double()
        want = _oracle(layer.double(), x.double())
    assert (got - want).norm() / want.norm() < 3e-2
