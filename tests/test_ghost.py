"""GhostModule (SPEC section 6): equivalence with the official GhostNet module, parameter counts, the
single-launch cheap operation and its shape set."""

import math

import pytest
import torch
from torch import nn

from tritonconv.dispatch import use_backend
from tritonconv.ops.ghost import GhostModule
from tritonconv.ops.ghost.adapter import ADAPTER
from tritonconv.zoo import separable


class OfficialGhostModule(nn.Module):
    """GhostNet's published module (huawei-noah/ghostnet), the oracle."""

    def __init__(self, inp, oup, kernel_size=1, ratio=2, dw_size=3, stride=1, relu=True):
        super().__init__()
        self.oup = oup
        init_channels = math.ceil(oup / ratio)
        new_channels = init_channels * (ratio - 1)
        self.primary_conv = nn.Sequential(
            nn.Conv2d(inp, init_channels, kernel_size, stride, kernel_size // 2, bias=False),
            nn.BatchNorm2d(init_channels), nn.ReLU(inplace=True) if relu else nn.Sequential())
        self.cheap_operation = nn.Sequential(
            nn.Conv2d(init_channels, new_channels, dw_size, 1, dw_size // 2, groups=init_channels, bias=False),
            nn.BatchNorm2d(new_channels), nn.ReLU(inplace=True) if relu else nn.Sequential())

    def forward(self, x):
        x1 = self.primary_conv(x)
        x2 = self.cheap_operation(x1)
        return torch.cat([x1, x2], dim=1)[:, :self.oup]


def _randomize_bn(module):
    for bn in module.modules():
        if isinstance(bn, nn.BatchNorm2d):
            n = bn.num_features
            with torch.no_grad():
                bn.running_mean.copy_(torch.linspace(-1, 1, n))
                bn.running_var.copy_(torch.linspace(0.5, 2, n))
                bn.weight.copy_(torch.linspace(0.5, 1.5, n))
                bn.bias.copy_(torch.linspace(-0.2, 0.3, n))


# (in, out, kernel_size, ratio, dw_size, stride, relu): odd out, ratio 3 (ghost maps cut), stride 2, k 3.
CASES = [(6, 10, 1, 2, 3, 1, True), (5, 7, 3, 3, 5, 2, False), (4, 5, 1, 3, 3, 1, True)]


@pytest.mark.parametrize("args", CASES)
@pytest.mark.parametrize("training", [False, True])
def test_matches_official_module(args, training, device):
    torch.manual_seed(0)
    official = OfficialGhostModule(*args).to(device, torch.float64)
    ours = GhostModule(*args).to(device, torch.float64)
    _randomize_bn(official)
    ours.load_state_dict(official.state_dict())
    official.train(training)
    ours.train(training)
    x = torch.randn(2, args[0], 9, 8, device=device, dtype=torch.float64)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = official(xa), ours(xb)
    assert ya.shape == yb.shape
    torch.testing.assert_close(yb, ya, rtol=1e-10, atol=1e-10)
    grad = torch.randn_like(ya)
    ga = torch.autograd.grad(ya, [xa, *official.parameters()], grad)
    gb = torch.autograd.grad(yb, [xb, *ours.parameters()], grad)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)
    if training:  # the running statistics moved the same way
        for a, b in zip(official.buffers(), ours.buffers()):
            torch.testing.assert_close(b, a)


def test_inference_writes_one_output_without_cat(monkeypatch, device):
    torch.manual_seed(0)
    module = GhostModule(6, 10).to(device).eval()
    _randomize_bn(module)
    x = torch.randn(2, 6, 5, 7, device=device)
    expected = OfficialGhostModule(6, 10).to(device).eval()
    expected.load_state_dict(module.state_dict())
    reference = expected(x)

    def no_cat(*args, **kwargs):
        raise AssertionError("torch.cat was called on the inference path")

    monkeypatch.setattr(torch, "cat", no_cat)
    with use_backend("triton"), torch.no_grad():
        y = module(x)
    torch.testing.assert_close(y, reference, rtol=1e-5, atol=1e-5)


def test_channels_last_and_fp16(device):
    torch.manual_seed(0)
    module = GhostModule(4, 8).to(device).eval()
    _randomize_bn(module)
    x = torch.randn(2, 4, 6, 5, device=device).contiguous(memory_format=torch.channels_last)
    expected = module.double()(x.double())
    y = module.half()(x.half())
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y.double(), expected, rtol=5e-3, atol=5e-3)


@pytest.mark.parametrize("args", CASES)
def test_parameter_count_formula(args):
    inp, out, k, ratio, dw, _, _ = args
    m = math.ceil(out / ratio)
    expected = m * inp * k * k + 2 * m + m * (ratio - 1) * (dw * dw + 2)
    assert sum(p.numel() for p in GhostModule(*args).parameters()) == expected
    assert sum(p.numel() for p in OfficialGhostModule(*args).parameters()) == expected


def _make_divisible(v, divisor=4):
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def _ghostnet_1x_parameters() -> int:
    """GhostNet 1.0x built from the official definition, with our GhostModule in every bottleneck."""
    def se(channels):  # SqueezeExcite: reduce and expand 1 x 1 convs with bias
        reduced = _make_divisible(channels * 0.25)
        return [nn.Conv2d(channels, reduced, 1), nn.Conv2d(reduced, channels, 1)]

    layers = [nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16)]
    channels = 16
    for stage in separable.GHOSTNET_CONFIG:
        for k, expansion, c, se_ratio, stride in stage:
            layers.append(GhostModule(channels, expansion, relu=True))
            if stride > 1:
                layers += [nn.Conv2d(expansion, expansion, k, stride, (k - 1) // 2, groups=expansion, bias=False),
                           nn.BatchNorm2d(expansion)]
            if se_ratio:
                layers += se(expansion)
            layers.append(GhostModule(expansion, c, relu=False))
            if channels != c or stride > 1:
                layers += [nn.Conv2d(channels, channels, k, stride, (k - 1) // 2, groups=channels, bias=False),
                           nn.BatchNorm2d(channels), nn.Conv2d(channels, c, 1, bias=False), nn.BatchNorm2d(c)]
            channels = c
    layers += [nn.Conv2d(channels, 960, 1, bias=False), nn.BatchNorm2d(960), nn.Conv2d(960, 1280, 1),
               nn.Linear(1280, 1000)]
    return sum(p.numel() for layer in layers for p in layer.parameters())


def test_ghostnet_1x_parameter_count():
    assert _ghostnet_1x_parameters() == 5_182_508


def test_shape_set_and_adapter(device):
    specs = ADAPTER.specs_for("ghostnet", batch=8, dtype="float32")
    assert sum(count for _, count, _ in specs) == len(separable.ghostnet_ghost_modules()) == 32
    label, _, spec = specs[3]
    assert spec.concat_input and spec.in_channels + spec.out_channels == spec.total_out_channels
    small = ADAPTER.shrink(spec)
    work = ADAPTER.make_workload(small, device)
    for kernel in ("forward", "backward_input", "backward_weight"):
        tile = ADAPTER.candidate_tiles(small, kernel)[0]
        actual, expected = ADAPTER.triton(kernel, work, tile)(), ADAPTER.expected(kernel, work)
        assert len(actual) == len(expected), kernel
        for got, want in zip(actual, expected):
            torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="shape set"):
        ADAPTER.specs_for("resnet", batch=1, dtype="float32")


@pytest.mark.parametrize("kwargs, match", [
    (dict(ratio=1), "ratio=1"), (dict(dw_size=4), "dw_size=4"), (dict(kernel_size=2), "kernel_size=2"),
    (dict(stride=3), "stride=3"), (dict(relu="yes"), "relu"),
])
def test_bad_hyperparameters(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        GhostModule(4, 8, **kwargs)


def test_bad_input(device):
    module = GhostModule(4, 8).to(device).eval()
    with pytest.raises(ValueError, match="channels"):
        module(torch.randn(1, 5, 4, 4, device=device))
    with pytest.raises(ValueError, match="dimensions"):
        module(torch.randn(4, 4, 4, device=device))


def test_batch_zero(device):
    module = GhostModule(4, 8).to(device).eval()
    assert module(torch.randn(0, 4, 5, 5, device=device)).shape == (0, 8, 5, 5)


def test_fallback_matches_triton(device):
    """The cuDNN fallback of the single-launch cheap operation (torch.cat of the kept maps) agrees."""
    torch.manual_seed(0)
    module = GhostModule(4, 5, ratio=3).to(device, torch.float64).eval()
    _randomize_bn(module)
    x = torch.randn(2, 4, 6, 5, device=device, dtype=torch.float64, requires_grad=True)
    results = {}
    for backend in ("triton", "fallback"):
        with use_backend(backend):
            y = module(x)
            results[backend] = (y, *torch.autograd.grad(y, [x, *module.parameters()], torch.ones_like(y)))
        assert module.explain(x).backend == "triton"  # explain outside the block: auto
    for a, b in zip(results["triton"], results["fallback"]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("activation", [None, "relu6"])
def test_channel_offset_views_stay_aligned(activation, device):
    """The backward reads ``grad[:, C:]`` and ``out[:, C:]``: with C = 12 (4 mod 8) those views start
    8 bytes past a 16-byte boundary in fp16. The launcher hands the kernels the aligned base and the
    lead in units of VEC (vector loads kept); the results match torch."""
    from tritonconv.ops.depthwise import launch
    from tritonconv.ops.depthwise.op import ghost_concat

    torch.manual_seed(0)
    c = 12
    out = torch.empty(2, 2 * c, 5, 4, device=device, dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    view = out[:, c:]
    layouts = launch.tensor_layouts(view, out)
    vec = launch.vector_width((c, c), layouts)
    base, (*strides, lead_v) = launch.aligned_base(view, layouts[0]), launch.operand_strides(layouts[:1], vec)
    assert vec == 4 and base.data_ptr() % 16 == 0 and lead_v * vec * 2 == view.data_ptr() - base.data_ptr()
    assert strides == [view.stride(0) // 4, 1, view.stride(2) // 4, view.stride(3) // 4]

    x = torch.randn(2, c, 5, 4, device=device).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(c, 1, 3, 3, device=device), torch.randn(c, device=device)
    grad = torch.randn(2, 2 * c, 5, 4, device=device).contiguous(memory_format=torch.channels_last)
    leaves = [t.half().requires_grad_() for t in (x, weight, bias)]
    with use_backend("triton"):
        y = ghost_concat(*leaves, activation=activation)
        got = torch.autograd.grad(y, leaves, grad.half())
    ref_leaves = [t.half().double().requires_grad_() for t in (x, weight, bias)]
    maps = nn.functional.conv2d(ref_leaves[0], ref_leaves[1], ref_leaves[2], padding=1, groups=c)
    maps = nn.functional.relu6(maps) if activation == "relu6" else maps
    expected = torch.cat([ref_leaves[0], maps], 1)
    wanted = torch.autograd.grad(expected, ref_leaves, grad.half().double())
    torch.testing.assert_close(y.double(), expected, rtol=2e-3, atol=2e-3)
    for a, b in zip(got, wanted):
        torch.testing.assert_close(a.double(), b, rtol=2e-3, atol=1e-2)
