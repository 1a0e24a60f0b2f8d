"""HetConv2d: forward and every gradient against the float64 definition (SPEC section 1)."""

import pytest
import torch

import tritonconv
from tritonconv.ops.hetconv import launch, reference
from tritonconv.ops.hetconv.spec import HetConvSpec

from conftest import DEVICE, poisoned_empty

TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2, torch.float64: 1e-12}
if DEVICE.type == "cuda":
    TOLERANCE[torch.float32] = 2e-3  # tf32, as cuDNN runs fp32 convs


def relative_error(actual, expected):
    return ((actual.double() - expected).norm() / expected.norm().clamp_min(1e-30)).item()


def run_case(batch, m, n, h, w, k, stride, p, bias, dtype, channels_last, *, noncontiguous=False):
    torch.manual_seed(batch * 1000 + m * 100 + n + h + w + k + stride + p)
    layer = tritonconv.HetConv2d(m, n, k, stride, p, bias).to(DEVICE, dtype)
    x = torch.randn(batch, m, h, w * (2 if noncontiguous else 1), device=DEVICE, dtype=dtype)
    if noncontiguous:
        x = x[..., ::2]
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    y = layer(x)
    grad = torch.randn_like(y)
    y.backward(grad)

    params = [layer.weight, layer.weight_pw] + ([layer.bias] if bias else [])
    x64 = x.detach().double().requires_grad_(True)
    params64 = [t.detach().double().requires_grad_(True) for t in params]
    y64 = reference.reference_forward(x64, params64[0], params64[1], params64[2] if bias else None, stride, p)
    y64.backward(grad.double())

    tol = TOLERANCE[dtype]
    assert y.dtype == dtype and y.shape == y64.shape
    assert y.is_contiguous(memory_format=torch.channels_last) == channels_last or y.is_contiguous()
    assert relative_error(y, y64) < tol, "forward"
    for name, got, want in zip(["input", "weight", "weight_pw", "bias"], [x] + params, [x64] + params64):
        if want.numel():
            assert relative_error(got.grad, want.grad) < tol, f"grad of {name}"


# (batch, M, N, H, W, k, stride, p, bias)
SHAPES = [
    (2, 8, 8, 5, 7, 3, 1, 2, True),  # H != W
    (2, 12, 6, 9, 6, 3, 2, 3, False),  # stride 2, odd size, N < M
    (1, 20, 40, 6, 5, 3, 1, 4, True),  # channels not a multiple of any block
    (2, 8, 8, 5, 5, 5, 2, 4, False),  # k = 5
    (2, 6, 12, 4, 4, 3, 1, 1, True),  # p = 1: an ordinary conv
    (2, 6, 6, 5, 3, 3, 2, 6, True),  # p = M: one k x k kernel per filter
    (3, 4, 8, 3, 4, 1, 1, 2, False),  # k = 1
]

# Cases for the kernels' addressing: odd channel counts per group (the per-element path), stride 2 with
# odd H and W (the input gradient's stride phases), tiles that hold several images, k = 5 at stride 2.
KERNEL_SHAPES = [
    (2, 15, 10, 7, 9, 3, 2, 5, True),  # 3 channels and 2 filters per group, stride 2, odd H and W
    (3, 10, 6, 3, 2, 5, 2, 2, False),  # k = 5, stride 2, images smaller than a tile
    (2, 5, 7, 5, 5, 3, 1, 1, True),  # p = 1 with odd channel counts (the LinearConv dense path)
    (2, 6, 9, 7, 5, 1, 2, 3, True),  # k = 1 at stride 2: odd pixels get no gradient
]


SHAPE_IDS = [f"b{s[0]}_m{s[1]}_n{s[2]}_{s[3]}x{s[4]}_k{s[5]}_s{s[6]}_p{s[7]}" for s in SHAPES]


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_forward_and_gradients(shape, dtype):
    run_case(*shape, dtype, channels_last=False)


@pytest.mark.parametrize("shape", SHAPES[:4], ids=["hw", "stride2", "odd", "k5"])
def test_channels_last(shape):
    run_case(*shape, torch.float32, channels_last=True)


@pytest.mark.parametrize("shape", KERNEL_SHAPES, ids=["odd_groups_s2", "k5_s2_small", "p1_odd", "k1_s2"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_kernel_addressing(shape, channels_last):
    run_case(*shape, torch.float32, channels_last)


def test_strided_bias_and_weight():
    """A bias that is a strided view and a weight that is not channels_last give the same result."""
    torch.manual_seed(9)
    x = torch.randn(2, 8, 5, 6, device=DEVICE)
    weight = torch.randn(8, 4, 3, 3, device=DEVICE)  # contiguous: the launcher copies it to channels_last
    weight_pw = torch.randn(8, 4, device=DEVICE)
    bias = torch.randn(8, 2, device=DEVICE)[:, 1]
    assert not bias.is_contiguous()
    with tritonconv.use_backend("triton"):
        y = tritonconv.hetconv2d(x, weight, weight_pw, bias, stride=1, p=2)
    expected = reference.reference_forward(x.double(), weight.double(), weight_pw.double(), bias.double(), 1, 2)
    assert relative_error(y, expected) < 1e-5


def test_weight_is_channels_last_and_state_dict_round_trips():
    """The parameter is stored in the kernels' layout; state_dict shapes are nn.Conv2d(groups=p)'s, and
    writes through .data and load_state_dict are seen on the next call (nothing is cached)."""
    torch.manual_seed(10)
    layer = tritonconv.HetConv2d(8, 8, 3, 1, 2, bias=True).to(DEVICE)
    assert layer.weight.is_contiguous(memory_format=torch.channels_last)
    assert layer.state_dict()["weight"].shape == torch.nn.Conv2d(8, 8, 3, groups=2).weight.shape
    x = torch.randn(1, 8, 5, 5, device=DEVICE)
    with tritonconv.use_backend("triton"):
        before = layer(x)
        layer.weight.data.mul_(2)  # a write that bypasses the version counter
        after = layer(x)
        other = tritonconv.HetConv2d(8, 8, 3, 1, 2, bias=True).to(DEVICE)
        other.load_state_dict(layer.state_dict())
        loaded = other(x)
    expected = reference.reference_forward(x.double(), layer.weight.double(), layer.weight_pw.double(),
                                           layer.bias.double(), 1, 2)
    assert relative_error(after, expected) < 1e-5 and relative_error(before, expected) > 1e-3
    torch.testing.assert_close(loaded, after)
    layer.weight.grad = None
    layer(x).sum().backward()
    assert layer.weight.grad.is_contiguous(memory_format=torch.channels_last)


def test_explain_says_how_nchw_is_handled():
    layer = tritonconv.HetConv2d(8, 8, 3, 1, 2).to(DEVICE)
    with tritonconv.use_backend("triton"):
        nchw = layer.explain(torch.randn(1, 8, 5, 5, device=DEVICE))
        nhwc = layer.explain(torch.randn(1, 8, 5, 5, device=DEVICE).contiguous(memory_format=torch.channels_last))
    assert "channels_last" in nchw.reason and "copied" in nchw.reason
    assert "copied" not in nhwc.reason


def test_noncontiguous_input():
    run_case(2, 8, 8, 5, 6, 3, 1, 2, True, torch.float32, False, noncontiguous=True)


def test_float64_gradcheck():
    torch.manual_seed(0)
    layer = tritonconv.HetConv2d(4, 4, 3, 2, 2, bias=True).to(DEVICE, torch.float64)
    x = torch.randn(1, 4, 5, 4, device=DEVICE, dtype=torch.float64, requires_grad=True)
    with tritonconv.use_backend("triton"):
        assert torch.autograd.gradcheck(lambda *a: tritonconv.hetconv2d(*a, stride=2, p=2),
                                        (x, layer.weight, layer.weight_pw, layer.bias))


@pytest.mark.parametrize("backend", ["triton", "fallback"])
def test_backends_agree(backend):
    torch.manual_seed(1)
    layer = tritonconv.HetConv2d(8, 12, 3, 2, 4, bias=True).to(DEVICE)
    x = torch.randn(2, 8, 7, 6, device=DEVICE, requires_grad=True)
    with tritonconv.use_backend(backend):
        assert layer.explain(x).backend == backend
        y = layer(x)
        y.square().sum().backward()
    x64 = x.detach().double().requires_grad_(True)
    y64 = reference.reference_forward(x64, layer.weight.double(), layer.weight_pw.double(), layer.bias.double(), 2, 4)
    y64.square().sum().backward()
    assert relative_error(y, y64) < 1e-5
    assert relative_error(x.grad, x64.grad) < 1e-5


def test_every_output_element_is_written(monkeypatch):
    """Outputs allocated full of NaN: a store the kernels skip would leave one behind."""
    monkeypatch.setattr(launch, "empty_like_layout",
                        lambda shape, like: poisoned_empty(*shape, device=like.device, dtype=like.dtype))
    run_case(2, 12, 6, 9, 6, 3, 2, 3, True, torch.float32, False)


def test_batch_of_zero():
    layer = tritonconv.HetConv2d(8, 8, 3, 1, 2, bias=True).to(DEVICE)
    x = torch.randn(0, 8, 5, 5, device=DEVICE, requires_grad=True)
    y = layer(x)
    assert y.shape == (0, 8, 5, 5)
    y.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(layer.weight.grad, torch.zeros_like(layer.weight))


def test_weight_gradient_split_reduction():
    """Weight gradients reduced over several pixel splits add up to the unsplit result."""
    torch.manual_seed(2)
    spec = HetConvSpec(2, 8, 8, 9, 7, 3, 1, 2, True)
    x, dy = torch.randn(*spec.input_shape, device=DEVICE), torch.randn(*spec.output_shape, device=DEVICE)
    whole = launch.backward_weight(dy, x, spec, launch.GemmTile(16, 16, 16, splits=1))
    split = launch.backward_weight(dy, x, spec, launch.GemmTile(16, 16, 16, splits=5))
    for a, b in zip(whole, split):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch,m,n,h,w,k,stride,p,tile", [
    (3, 8, 8, 5, 6, 3, 1, 2, launch.GemmTile(128, 64, 128, 4, 2)),   # two images per tile, a partial last one
    (2, 8, 12, 13, 19, 3, 2, 4, launch.GemmTile(128, 64, 32, 4, 2)),  # stride 2, partial edge tiles
    (2, 16, 8, 9, 11, 5, 1, 2, launch.GemmTile(64, 64, 32, 4, 2)),    # 5 x 5: 24 off-centre taps, edge tiles
])
def test_weight_gradient_tiles_match_the_reference(batch, m, n, h, w, k, stride, p, tile):
    """The weight-gradient kernel's padding tests (per-axis ranges, whole-image tiles) on the tiles the
    GPU defaults use, in float64 against the published backward."""
    torch.manual_seed(4)
    spec = HetConvSpec(batch, m, n, h, w, k, stride, p, True, "float64")
    x = torch.randn(*spec.input_shape, device=DEVICE, dtype=torch.float64)
    dy = torch.randn(*spec.output_shape, device=DEVICE, dtype=torch.float64)
    stub_w = torch.zeros(spec.weight_shape, device=DEVICE, dtype=torch.float64)
    stub_pw = torch.zeros(spec.weight_pw_shape, device=DEVICE, dtype=torch.float64)
    expected = reference.fallback_backward(dy, x, stub_w, stub_pw, spec, False, True)[1:]
    got = launch.backward_weight(dy, x, spec, tile)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_autocast_casts_to_the_autocast_dtype():
    torch.manual_seed(3)
    layer = tritonconv.HetConv2d(8, 8, 3, 1, 2).to(DEVICE)
    x = torch.randn(2, 8, 5, 5, device=DEVICE)
    with torch.autocast(DEVICE.type, dtype=torch.float16):
        y = layer(x)
    assert y.dtype == torch.float16
    expected = reference.reference_forward(x.double(), layer.weight.double(), layer.weight_pw.double(), None, 1, 2)
    assert relative_error(y, expected) < 2e-3


def test_torch_compile_fullgraph_forward_and_backward():
    torch.manual_seed(4)
    model = torch.nn.Sequential(tritonconv.HetConv2d(8, 8, 3, 1, 2, bias=True), torch.nn.ReLU(),
                                tritonconv.HetConv2d(8, 4, 3, 2, 2)).to(DEVICE)
    x = torch.randn(2, 8, 6, 5, device=DEVICE, requires_grad=True)
    eager = model(x)
    eager.sum().backward()
    eager_grads = [x.grad.clone()] + [q.grad.clone() for q in model.parameters()]
    x.grad = None
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager" if DEVICE.type == "cpu" else "inductor")
    out = compiled(x)
    out.sum().backward()
    torch.testing.assert_close(out, eager)
    for got, want in zip([x.grad] + [q.grad for q in model.parameters()], eager_grads):
        torch.testing.assert_close(got, want)


def test_opcheck():
    layer = tritonconv.HetConv2d(4, 4, 3, 1, 2, bias=True).to(DEVICE)
    x = torch.randn(1, 4, 4, 5, device=DEVICE, requires_grad=True)
    torch.library.opcheck(torch.ops.tritonconv.hetconv2d.default, (x, layer.weight, layer.weight_pw, layer.bias, 1, 2),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


# ---- conversions ---------------------------------------------------------------------------------

def test_to_dense_computes_the_same_function():
    torch.manual_seed(5)
    layer = tritonconv.HetConv2d(8, 12, 3, 2, 4, bias=True)
    x = torch.randn(2, 8, 7, 7)
    with tritonconv.use_backend("fallback"):
        torch.testing.assert_close(layer.to_dense()(x), layer(x), rtol=1e-5, atol=1e-5)


def test_from_dense_keeps_in_group_kernels_and_centre_taps():
    torch.manual_seed(6)
    layer = tritonconv.HetConv2d(8, 8, 3, 1, 2, bias=True)
    dense = layer.to_dense()
    back = tritonconv.HetConv2d.from_dense(dense, p=2)
    torch.testing.assert_close(back.weight, layer.weight)
    torch.testing.assert_close(back.weight_pw, layer.weight_pw)
    torch.testing.assert_close(back.bias, layer.bias)
    with pytest.raises(ValueError, match="padding"):
        tritonconv.HetConv2d.from_dense(torch.nn.Conv2d(8, 8, 3, padding=0), p=2)
    with pytest.raises(ValueError, match="groups"):
        tritonconv.HetConv2d.from_dense(torch.nn.Conv2d(8, 8, 3, padding=1, groups=2), p=2)


def test_from_shifted_pattern_matches_up_to_the_channel_permutation():
    torch.manual_seed(7)
    m, n, k, p = 8, 12, 3, 4
    shifted = torch.randn(n, m, k, k) * reference.shifted_pattern_mask(m, n, k, p)
    bias = torch.randn(n)
    x = torch.randn(2, m, 5, 6)
    expected = torch.nn.functional.conv2d(x, shifted, bias, padding=1)  # the paper's layer
    layer = tritonconv.HetConv2d.from_shifted(shifted, p, bias)
    sigma_in, sigma_out = reference.shifted_permutation(m, p), reference.shifted_permutation(n, p)
    x_blocked = torch.empty_like(x)
    x_blocked[:, sigma_in] = x
    with tritonconv.use_backend("fallback"):
        y = layer(x_blocked)
    torch.testing.assert_close(y[:, sigma_out], expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="outside the shifted"):
        tritonconv.HetConv2d.from_shifted(torch.randn(n, m, k, k), p)


# ---- cost ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("p", [1, 2, 4, 8, 16, 32, 64])
def test_vgg16_cifar_macs_match_the_paper_formula(p):
    model = tritonconv.models.vgg16_cifar(p=p)
    assert tritonconv.count_macs(model, (1, 3, 32, 32)) == 2_036_736 + 34_603_008 * (p + 8) // p
    assert tritonconv.count_macs(model, (3, 3, 32, 32)) == 3 * (2_036_736 + 34_603_008 * (p + 8) // p)


def test_parameter_count_and_mac_ratio():
    m, n, k, p = 64, 128, 3, 4
    layer = tritonconv.HetConv2d(m, n, k, p=p, bias=True)
    assert sum(t.numel() for t in layer.parameters()) == n * m * (1 + (k * k - 1) / p) + n
    spec = layer.spec((2, m, 10, 10))
    assert spec.cost().macs / spec.dense_cost().macs == pytest.approx(1 / p + (1 - 1 / p) / k**2)
    # the fallback reads x twice, writes two partial outputs, and the add reads them and writes y
    x, y = 2 * m * 10 * 10, 2 * n * 10 * 10
    expanded = n * (m // p * k * k + m + 1)  # grouped weight, the [N, M] 1 x 1 weight, the bias
    assert spec.unfused_cost().bytes == 4 * (2 * x + 5 * y + expanded)


# ---- bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    (dict(in_channels=6, out_channels=8, p=4), "p=4 must divide both in_channels=6"),
    (dict(in_channels=8, out_channels=6, p=4), "out_channels=6"),
    (dict(in_channels=8, out_channels=8, kernel_size=4), "kernel_size=4 must be odd"),
    (dict(in_channels=8, out_channels=8, stride=0), "stride=0"),  # stride 3 is valid: the fallback runs it
    (dict(in_channels=0, out_channels=8), "in_channels=0"),
    (dict(in_channels=8, out_channels=8, p=0), "p=0"),
])
def test_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tritonconv.HetConv2d(**kwargs)


def test_bad_inputs_get_clear_errors():
    layer = tritonconv.HetConv2d(8, 8, 3, 1, 2).to(DEVICE)
    with pytest.raises(ValueError, match="input has 6 channels"):
        layer(torch.randn(1, 6, 5, 5, device=DEVICE))
    with pytest.raises(ValueError, match="input must have 4 dimensions"):
        layer(torch.randn(8, 5, 5, device=DEVICE))
    with pytest.raises(TypeError, match="input has dtype int32"):
        layer(torch.ones(1, 8, 5, 5, device=DEVICE, dtype=torch.int32))
    with pytest.raises(TypeError, match="weight has dtype float32 but input has float16"):
        layer(torch.randn(1, 8, 5, 5, device=DEVICE, dtype=torch.float16))
    with pytest.raises(ValueError, match=r"weight_pw has shape \(8, 4\); expected \(8, 6\)"):
        tritonconv.hetconv2d(torch.randn(1, 8, 5, 5, device=DEVICE), layer.weight[:, :2], layer.weight_pw, p=4)


# ---- GPU tier ------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("channels_last", [False, True])
def test_bfloat16_on_gpu(channels_last):
    run_case(4, 64, 128, 19, 23, 3, 1, 4, True, torch.bfloat16, channels_last)
    run_case(4, 96, 64, 17, 12, 3, 2, 4, False, torch.bfloat16, channels_last)


@pytest.mark.gpu
def test_realistic_shapes_on_gpu():
    run_case(32, 256, 256, 28, 28, 3, 1, 4, False, torch.float16, True)
    run_case(16, 128, 256, 56, 56, 3, 2, 8, True, torch.float32, False)


@pytest.mark.gpu
def test_past_two_to_the_31_elements():
    """An input of more than 2^31 elements: int64 addressing in every kernel."""
    torch.manual_seed(8)
    batch, m, n, h, w = 1040, 64, 64, 180, 180  # 2.16e9 input elements
    layer = tritonconv.HetConv2d(m, n, 3, 1, 4).to("cuda", torch.bfloat16)
    x = torch.randn(batch, m, h, w, device="cuda", dtype=torch.bfloat16)
    assert x.numel() > 2**31
    y = layer(x)
    for b in (0, batch - 1):  # the first and the last image, computed on their own
        expected = reference.reference_forward(x[b:b + 1].double(), layer.weight.double(), layer.weight_pw.double(),
                                               None, 1, 4)
        assert relative_error(y[b:b + 1], expected) < 2e-2
    del x, y
    dy = torch.randn(batch, n, h, w, device="cuda", dtype=torch.bfloat16)
    spec = HetConvSpec(batch, m, n, h, w, 3, 1, 4, False, "bfloat16")
    dx = launch.backward_input(dy, layer.weight, layer.weight_pw, spec, launch.default_tile(spec, "backward_input"), dy)
    last = reference.fallback_backward(dy[-1:].double(), torch.zeros(1, m, h, w, device="cuda", dtype=torch.float64),
                                       layer.weight.double(), layer.weight_pw.double(),
                                       HetConvSpec(1, m, n, h, w, 3, 1, 4, False, "float64"), True, False)[0]
    assert relative_error(dx[-1:], last) < 2e-2
