"""DepthwiseSeparableConv2d (SPEC section 2) and the standalone depthwise conv: values and gradients
against float64 F.conv2d references, layouts, BN folding, bad input, compile and dispatch."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tritonconv.adapter import max_relative_error, tolerance
from tritonconv.dispatch import use_backend
from tritonconv.ops.depthwise import DepthwiseConv2d, depthwise_conv2d
from tritonconv.ops.depthwise.adapter import ADAPTER as DEPTHWISE_ADAPTER
from tritonconv.ops.depthwise.spec import DepthwiseSpec
from tritonconv.ops.dwsep import DepthwiseSeparableConv2d, DwSepSpec, dwsep_conv2d
from tritonconv.ops.dwsep import launch as dwsep_launch
from tritonconv.ops.dwsep.adapter import ADAPTER as DWSEP_ADAPTER
from tritonconv.tiles import GemmTile
from tritonconv.zoo import separable

ACT = {None: lambda z: z, "relu": F.relu, "relu6": F.relu6}


def reference(x, layer: DepthwiseSeparableConv2d):
    """SPEC section 2's definition with F.conv2d."""
    h = F.conv2d(x, layer.dw_weight, layer.dw_bias, layer.stride, layer.padding, layer.dilation,
                 groups=layer.in_channels)
    h = ACT[None if layer.activation == "none" else layer.activation](h)
    y = F.conv2d(h, layer.pw_weight, layer.pw_bias)
    return ACT[None if layer.out_activation == "none" else layer.out_activation](y)


def _check_layer(layer, x, rtol):
    """Forward and every gradient of ``layer`` against ``reference`` in float64."""
    torch.manual_seed(1)
    x = x.clone().requires_grad_()
    y = layer(x)
    params = [p for p in layer.parameters()]
    x64 = x.detach().double().requires_grad_()
    layer64 = [p.detach().double().requires_grad_() for p in params]
    ref_layer = type("Ref", (), {})()
    for name in ("in_channels", "stride", "padding", "dilation", "activation", "out_activation"):
        setattr(ref_layer, name, getattr(layer, name))
    names = [n for n, _ in layer.named_parameters()]
    for name in ("dw_weight", "dw_bias", "pw_weight", "pw_bias"):
        setattr(ref_layer, name, layer64[names.index(name)] if name in names else None)
    expected = reference(x64, ref_layer)
    assert y.shape == expected.shape and y.dtype == x.dtype
    assert max_relative_error((y,), (expected,)) < rtol
    grad = torch.randn_like(expected)
    actual = torch.autograd.grad(y, [x, *params], grad.to(y.dtype))
    wanted = torch.autograd.grad(expected, [x64, *layer64], grad)
    for name, a, e in zip(["x", *names], actual, wanted):
        assert a.shape == e.shape and a.dtype == x.dtype, name
        assert max_relative_error((a,), (e,)) < rtol, name


# (C, N, H, W, k, stride, dilation, activation, out_activation, bias, channels_last): every kernel size,
# stride, dilation and activation appears; channels not multiples of the blocks; H != W.
CASES = [
    (5, 7, 9, 6, 3, 1, 1, "relu", None, True, False),
    (20, 33, 7, 9, 5, 2, 1, "relu6", "relu", True, True),
    (4, 3, 8, 7, 7, 1, 2, None, "relu6", False, False),
    (17, 40, 6, 5, 3, 2, 2, "relu6", None, True, False),
    (3, 18, 11, 4, 5, 1, 1, "relu", "relu6", False, True),
    (9, 5, 9, 9, 7, 2, 1, "relu", None, True, True),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"C{c[0]}N{c[1]}k{c[4]}s{c[5]}d{c[6]}{c[7]}-{c[8]}")
def test_float64_forward_and_gradients(case, device):
    c, n, h, w, k, stride, dilation, act, out_act, bias, channels_last = case
    torch.manual_seed(0)
    layer = DepthwiseSeparableConv2d(c, n, k, stride, None, dilation, bias, act, out_act).to(device, torch.float64)
    x = torch.randn(2, c, h, w, device=device, dtype=torch.float64) * 2
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    _check_layer(layer, x, 1e-10)
    assert layer(x).is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_low_precision(dtype, device):
    torch.manual_seed(0)
    layer = DepthwiseSeparableConv2d(12, 20, 3, 2, activation="relu6").to(device, dtype)
    _check_layer(layer, torch.randn(2, 12, 7, 6, device=device, dtype=dtype), tolerance(dtype))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gpu_mobilenet_block(dtype, device):
    torch.manual_seed(0)
    layer = DepthwiseSeparableConv2d(144, 32, 3, 2, activation="relu6").to(device, dtype)
    x = torch.randn(16, 144, 56, 56, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    _check_layer(layer, x, tolerance(dtype))


def test_explicit_padding_and_non_contiguous_input(device):
    torch.manual_seed(0)
    layer = DepthwiseSeparableConv2d(6, 5, 3, 1, padding=0, activation="relu").to(device, torch.float64)
    x = torch.randn(2, 12, 6, 8, device=device, dtype=torch.float64)[:, ::2, :, 1:]  # strided channels
    assert not x.is_contiguous()
    _check_layer(layer, x, 1e-10)


def test_parameters_and_cost():
    layer = DepthwiseSeparableConv2d(128, 128, 3)
    assert sum(p.numel() for p in layer.parameters()) == 17_792
    assert [n for n, _ in layer.named_parameters()] == ["dw_weight", "dw_bias", "pw_weight", "pw_bias"]
    assert layer.dw_weight.shape == (128, 1, 3, 3) and layer.pw_weight.shape == (128, 128, 1, 1)
    spec = layer.spec((2, 128, 14, 14))
    assert spec.cost().macs == 2 * 14 * 14 * 128 * (9 + 128)
    assert spec.cost().macs / spec.dense_cost().macs == pytest.approx(1 / 128 + 1 / 9)
    # fused: x, y and the weights once (fp32); the unfused pair also writes and re-reads the intermediate
    x, mid, y = 2 * 128 * 14 * 14, 2 * 128 * 14 * 14, 2 * 128 * 14 * 14
    assert spec.cost().bytes == 4 * (x + y + 17_792)
    assert spec.unfused_cost().bytes == 4 * (x + 2 * mid + y + 17_792)
    assert DepthwiseSeparableConv2d(8, 4, 3, bias=False).dw_bias is None


def test_batch_zero(device):
    layer = DepthwiseSeparableConv2d(4, 6, 3, 2).to(device)
    x = torch.randn(0, 4, 7, 7, device=device, requires_grad=True)
    y = layer(x)
    assert y.shape == (0, 6, 4, 4)
    y.sum().backward()
    assert x.grad.shape == x.shape and float(layer.pw_weight.grad.abs().sum()) == 0.0


@pytest.mark.parametrize("make, match", [
    (lambda: DepthwiseSeparableConv2d(4, 4, activation="gelu"), "activation='gelu'"),
    (lambda: DepthwiseSeparableConv2d(4, 4, out_activation="tanh"), "out_activation='tanh'"),
    (lambda: DepthwiseSeparableConv2d(4, 4, kernel_size=4), "kernel_size=4"),
    (lambda: DepthwiseSeparableConv2d(4, 4, stride=0), "stride=0"),  # stride 3 is valid: the fallback runs it
    (lambda: DepthwiseSeparableConv2d(0, 4), "in_channels=0"),
    (lambda: DepthwiseSeparableConv2d(4, 4, dilation=0), "dilation=0"),
    (lambda: DepthwiseSeparableConv2d(4, 4, padding=-1), "padding=-1"),
])
def test_bad_hyperparameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_inputs(device):
    layer = DepthwiseSeparableConv2d(4, 6).to(device)
    with pytest.raises(ValueError, match="input has 5 channels .*expected in_channels=4"):
        layer(torch.randn(1, 5, 6, 6, device=device))
    with pytest.raises(ValueError, match="input must have 4 dimensions"):
        layer(torch.randn(4, 6, 6, device=device))
    with pytest.raises(TypeError, match="input has dtype int64"):
        layer(torch.ones(1, 4, 6, 6, device=device, dtype=torch.int64))
    with pytest.raises(TypeError, match="dw_weight has dtype float32 but input has float64"):
        layer(torch.randn(1, 4, 6, 6, device=device, dtype=torch.float64))
    with pytest.raises(ValueError, match="smaller than the dilated window"):
        DepthwiseSeparableConv2d(4, 6, 5, padding=0).to(device)(torch.randn(1, 4, 3, 3, device=device))
    with pytest.raises(ValueError, match="pw_weight has shape"):
        dwsep_conv2d(torch.randn(1, 4, 5, 5), torch.randn(4, 1, 3, 3), None, torch.randn(6, 3, 1, 1))
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        layer("not a tensor")


def test_bn_folding(device):
    torch.manual_seed(0)
    dw, bn = nn.Conv2d(6, 6, 5, 2, 2, groups=6, bias=False), nn.BatchNorm2d(6)
    pw, bn2 = nn.Conv2d(6, 9, 1, bias=True), nn.BatchNorm2d(9)
    for b in (bn, bn2):
        with torch.no_grad():
            b.running_mean.uniform_(-1, 1)
            b.running_var.uniform_(0.5, 2)
            b.weight.uniform_(0.5, 1.5)
            b.bias.uniform_(-0.5, 0.5)
    modules = nn.Sequential(dw, bn, nn.ReLU6(), pw, bn2).to(device, torch.float64).eval()
    layer = DepthwiseSeparableConv2d.from_modules(*modules[:4], modules[4])
    x = torch.randn(2, 6, 9, 8, device=device, dtype=torch.float64)
    torch.testing.assert_close(layer(x), modules(x), rtol=1e-10, atol=1e-10)
    assert layer.activation == "relu6" and layer.stride == 2
    plain = DepthwiseSeparableConv2d.from_modules(modules[0], None, None, modules[3])
    torch.testing.assert_close(plain(x), modules[3](modules[0](x)), rtol=1e-10, atol=1e-10)
    bn.train()
    with pytest.raises(ValueError, match="bn=.*batch statistics"):
        DepthwiseSeparableConv2d.from_modules(dw, bn, None, pw)
    bn.eval()
    with pytest.raises(ValueError, match="not depthwise"):
        DepthwiseSeparableConv2d.from_modules(nn.Conv2d(6, 6, 3, padding=1), None, None, pw)
    with pytest.raises(ValueError, match="pw_conv=.*1 x 1"):
        DepthwiseSeparableConv2d.from_modules(dw, None, None, nn.Conv2d(6, 9, 3))
    with pytest.raises(ValueError, match="act="):
        DepthwiseSeparableConv2d.from_modules(dw, None, nn.GELU(), pw)


def test_torch_compile_fullgraph(device):
    torch.manual_seed(0)
    layer = DepthwiseSeparableConv2d(5, 6, 3, activation="relu").to(device)
    depthwise = DepthwiseConv2d(6, 3, activation="relu6").to(device)
    model = nn.Sequential(layer, depthwise)
    x = torch.randn(2, 5, 6, 5, device=device, requires_grad=True)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    y = compiled(x)
    y.sum().backward()
    expected_grad = x.grad.clone()
    x.grad = None
    y_eager = model(x)
    y_eager.sum().backward()
    torch.testing.assert_close(y, y_eager)
    torch.testing.assert_close(x.grad, expected_grad)


def test_opcheck(device):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 4, device=device, dtype=torch.float64, requires_grad=True)
    args = (x, torch.randn(3, 1, 3, 3, device=device, dtype=torch.float64, requires_grad=True),
            torch.randn(3, device=device, dtype=torch.float64, requires_grad=True),
            torch.randn(4, 3, 1, 1, device=device, dtype=torch.float64, requires_grad=True), None, [2, 1, 1], "relu",
            "none")
    torch.library.opcheck(torch.ops.tritonconv.dwsep_conv2d, args,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_dispatch_decisions(device, monkeypatch):
    layer = DepthwiseSeparableConv2d(4, 6).to(device)
    depthwise = DepthwiseConv2d(4).to(device)
    x = torch.randn(1, 4, 5, 5, device=device)
    assert layer.explain(x).backend == "triton"
    assert set(layer.explain(x, "backward").tiles) == {"backward_pointwise", "backward_input", "backward_weight"}
    assert "each depthwise tile computed once for every filter" in layer.explain(x).reason
    with use_backend("fallback"):
        assert layer.explain(x, "backward").backend == "fallback"
    monkeypatch.setenv("TRITONCONV_BACKEND", "fallback")
    for module in (layer, depthwise):
        decision = module.explain(x)
        assert decision.backend == "fallback" and "forced" in decision.reason
    fallback = layer(x)
    monkeypatch.setenv("TRITONCONV_BACKEND", "triton")
    torch.testing.assert_close(layer(x), fallback, rtol=1e-5, atol=1e-5)


def test_fallback_gradients_match(device):
    torch.manual_seed(0)
    layer = DepthwiseSeparableConv2d(5, 4, 3, 2, activation="relu", out_activation="relu6").to(device, torch.float64)
    x = torch.randn(2, 5, 6, 7, device=device, dtype=torch.float64, requires_grad=True)
    grads = {}
    for backend in ("triton", "fallback"):
        with use_backend(backend):
            y = layer(x)
            grads[backend] = torch.autograd.grad(y, [x, *layer.parameters()], torch.ones_like(y))
    for a, b in zip(grads["triton"], grads["fallback"]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


# ---- the standalone depthwise conv ----------------------------------------------------------------

@pytest.mark.parametrize("c, multiplier, k, stride, dilation, act, bias, channels_last", [
    (5, 1, 3, 1, 1, "relu", True, False), (3, 2, 5, 2, 1, "relu6", False, True), (6, 1, 7, 2, 2, None, True, False),
])
def test_depthwise_float64(c, multiplier, k, stride, dilation, act, bias, channels_last, device):
    torch.manual_seed(0)
    layer = DepthwiseConv2d(c, k, stride, None, dilation, bias, multiplier, act).to(device, torch.float64)
    x = torch.randn(2, c, 9, 7, device=device, dtype=torch.float64) * 2
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    y = layer(x)
    x64 = x.detach().clone().requires_grad_()
    params = list(layer.parameters())
    params64 = [p.detach().clone().requires_grad_() for p in params]
    expected = ACT[act](F.conv2d(x64, params64[0], params64[1] if bias else None, stride, dilation * (k // 2),
                                 dilation, groups=c))
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-10)
    grad = torch.randn_like(expected)
    for a, e in zip(torch.autograd.grad(y, [x, *params], grad), torch.autograd.grad(expected, [x64, *params64], grad)):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("wrt", ["input", "weights", "both"])
def test_depthwise_backward_paths_float64(wrt, device):
    """The backward's three launch plans with an activation: dz masked by the weight gradient and read by
    the input gradient (both), masked by its own launch (input only), or only inside the weight gradient."""
    torch.manual_seed(1)
    x = torch.randn(2, 8, 9, 7, device=device, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(8, 1, 5, 5, device=device, dtype=torch.float64)
    bias = torch.randn(8, device=device, dtype=torch.float64)
    x.requires_grad_(wrt != "weights")
    weight.requires_grad_(wrt != "input")
    bias.requires_grad_(wrt != "input")
    wrt_tensors = [t for t in (x, weight, bias) if t.requires_grad]
    y = depthwise_conv2d(x, weight, bias, 2, None, 1, "relu6")
    copies = [t.detach().clone().requires_grad_() for t in wrt_tensors]
    by_name = dict(zip([n for n, t in (("x", x), ("w", weight), ("b", bias)) if t.requires_grad], copies))
    expected = F.relu6(F.conv2d(by_name.get("x", x.detach()), by_name.get("w", weight.detach()),
                                by_name.get("b", bias.detach()), 2, 2, 1, 8))
    grad = torch.randn_like(expected)
    for a, e in zip(torch.autograd.grad(y, wrt_tensors, grad), torch.autograd.grad(expected, copies, grad)):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


def test_depthwise_weight_relayout_follows_in_place_updates(device):
    """The kernels' [k*k, C] copy of the weight is kept per parameter version: an optimizer's in-place
    step (or any write autograd sees) must show in the next call."""
    layer = DepthwiseConv2d(8, 3).to(device, torch.float64)
    x = torch.randn(2, 8, 6, 6, device=device, dtype=torch.float64)
    first = layer(x)
    torch.testing.assert_close(layer(x), first, rtol=0, atol=0)
    with torch.no_grad():
        layer.weight.mul_(2)
        layer.bias.zero_()
    torch.testing.assert_close(layer(x), F.conv2d(x, layer.weight, None, 1, 1, 1, 8), rtol=1e-12, atol=1e-12)
    layer.weight = nn.Parameter(torch.randn_like(layer.weight))
    torch.testing.assert_close(layer(x), F.conv2d(x, layer.weight, None, 1, 1, 1, 8), rtol=1e-12, atol=1e-12)


def test_depthwise_bad_inputs(device):
    with pytest.raises(ValueError, match="input has 3 channels but weight has shape"):
        depthwise_conv2d(torch.randn(1, 3, 5, 5, device=device), torch.randn(4, 1, 3, 3, device=device))
    with pytest.raises(ValueError, match="activation='swish'"):
        DepthwiseConv2d(4, activation="swish")
    with pytest.raises(ValueError, match="multiplier=0"):
        DepthwiseConv2d(4, multiplier=0)
    assert DepthwiseConv2d(4, 3, 2).to(device)(torch.randn(0, 4, 5, 5, device=device)).shape == (0, 4, 3, 3)


# ---- shape sets and adapters ---------------------------------------------------------------------

def test_mobilenet_v2_shape_set():
    layers = separable.mobilenet_v2(224)
    assert len(layers) == 17  # one depthwise + project pair per inverted residual block
    assert (layers[0].in_channels, layers[0].out_channels, layers[0].height) == (32, 16, 112)
    assert (layers[1].in_channels, layers[1].stride) == (96, 2)
    assert (layers[-1].in_channels, layers[-1].out_channels, layers[-1].height) == (960, 320, 7)
    assert all(layer.activation == "relu6" and layer.out_activation == "none" for layer in layers)
    specs = DWSEP_ADAPTER.specs_for("mobilenet_v2", batch=8, dtype="float16", channels_last=True)
    assert sum(count for _, count, _ in specs) == 17 and isinstance(specs[0][2], DwSepSpec)
    with pytest.raises(ValueError, match="shape set"):
        DWSEP_ADAPTER.specs_for("vgg16", batch=1, dtype="float32")


def test_efficientnet_b0_shape_set():
    """The published EfficientNet-B0 (Tan & Le 2019, table 1; torchvision's efficientnet_b0): 16 MBConv
    blocks, 9 of them 5 x 5, at 112, 56, 28, 14 and 7 px."""
    layers = separable.efficientnet_b0(224)
    assert len(layers) == 16
    assert sum(layer.kernel_size == 5 for layer in layers) == 9
    assert [layer.stride for layer in layers].count(2) == 4
    assert (layers[0].in_channels, layers[0].out_channels, layers[0].height) == (32, 16, 112)  # expansion 1
    assert (layers[3].in_channels, layers[3].kernel_size, layers[3].stride, layers[3].height) == (144, 5, 2, 56)
    assert (layers[-1].in_channels, layers[-1].out_channels, layers[-1].kernel_size, layers[-1].height) == (
        1152, 320, 3, 7)
    # 1x1 projections: EfficientNet-B0's block outputs
    assert [layer.out_channels for layer in layers] == [16, 24, 24, 40, 40, 80, 80, 80, 112, 112, 112, 192, 192, 192,
                                                        192, 320]
    for adapter, kind in ((DWSEP_ADAPTER, DwSepSpec), (DEPTHWISE_ADAPTER, DepthwiseSpec)):
        specs = adapter.specs_for("efficientnet_b0", batch=8, dtype="bfloat16", channels_last=True)
        assert sum(count for _, count, _ in specs) == 16 and all(isinstance(s, kind) for _, _, s in specs)
        assert {s.kernel_size for _, _, s in specs} == {3, 5}
        assert "efficientnet_b0" in adapter.shape_sets


@pytest.mark.parametrize("adapter, shape_set", [(DWSEP_ADAPTER, "mobilenet_v2"), (DWSEP_ADAPTER, "ghostnet"),
                                                (DEPTHWISE_ADAPTER, "ghostnet"), (DWSEP_ADAPTER, "efficientnet_b0"),
                                                (DEPTHWISE_ADAPTER, "efficientnet_b0")])
def test_adapter_kernels_match_expected(adapter, shape_set, device):
    _, _, spec = adapter.specs_for(shape_set, batch=8, dtype="float32", channels_last=True)[1]
    small = adapter.shrink(spec)
    work = adapter.make_workload(small, device)
    kernels = adapter.operator.kernels_of_pass["forward"] + adapter.operator.kernels_of_pass["backward"]
    for kernel in kernels:
        tile = adapter.candidate_tiles(small, kernel)[-1]
        assert max_relative_error(adapter.triton(kernel, work, tile)(), adapter.expected(kernel, work)) < 1e-4, kernel
    for pass_ in ("forward", "backward"):
        assert adapter.fallback(pass_, work)() and adapter.dense(pass_, work)()


@pytest.mark.parametrize("n, act, out_act, channels_last", [(80, "relu6", "relu", True), (40, "relu", "none", False)])
def test_filter_plans(n, act, out_act, channels_last, device):
    """Several filter chunks per program, and (N=80) several filter groups per pixel tile or channel chunk,
    each recomputing the depthwise tile; the backward without weight gradients (dz alone)."""
    spec = DwSepSpec(2, 24, n, 7, 6, 3, 2, 1, 1, True, True, act, out_act, "float64", channels_last)
    work = DWSEP_ADAPTER.make_workload(spec, device)
    t, dy = work.tensors, work.grad
    params = [t[name] for name in ("dw_weight", "dw_bias", "pw_weight", "pw_bias")]
    tile = GemmTile(32, 16, 16, num_warps=2, num_stages=1)  # 16-filter chunks, at most 4 per program
    plans = [dwsep_launch.filter_plan(spec, kernel, tile) for kernel in ("forward", "backward_pointwise")]
    assert [(p.chunks, p.per_program, p.groups) for p in plans] == ([(5, 3, 2)] * 2 if n == 80 else [(3, 3, 1)] * 2)
    assert ("recompute" in plans[0].describe()) == (n == 80)
    y = dwsep_launch.forward(t["x"], *params, spec, tile)
    assert max_relative_error((y,), DWSEP_ADAPTER.expected("forward", work)) < 1e-10
    got = dwsep_launch.backward_pointwise(dy, t["out"], t["x"], *params[:3], spec, tile)
    assert max_relative_error(got, DWSEP_ADAPTER.expected("backward_pointwise", work)) < 1e-10
    dz, no_pw, no_pb = dwsep_launch.backward_pointwise(dy, t["out"], t["x"], *params[:3], spec, tile, False)
    assert no_pw is None and no_pb is None
    torch.testing.assert_close(dz, got[0], rtol=1e-12, atol=1e-12)
