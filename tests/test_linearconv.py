"""LinearConv2d: every variant against the float64 definition (SPEC section 5), on the Triton conv and on
the cuDNN path; the sparse schedule, the correlation loss, eval-mode bank caching, conversion, cost."""

import numpy as np
import pytest
import torch

from tritonconv import count_macs, use_backend
from tritonconv.ops.linearconv import LinearConv2d, correlation_loss, dense, reference

from conftest import DEVICE

TOLERANCE = 2e-3 if DEVICE.type == "cuda" else 1e-5  # tf32 on the GPU

VARIANTS = {"vanilla": {}, "lowrank": {"rank": 2}, "rankratio": {"rank": 0.5}, "sparse": {"sparsity": 0.5}}
# (in, out, k, stride, padding, dilation, groups): the first fits the Triton conv, the others do not.
PATHS = {
    "triton": (4, 7, 3, 2, 1, 1, 1),
    "cudnn_padding0": (4, 6, 3, 1, 0, 1, 1),
    "cudnn_groups2_dilation2": (4, 6, 3, 1, 2, 2, 2),
}


def relative_error(actual, expected):
    return ((actual.double() - expected).norm() / expected.norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_forward_and_gradients_against_float64(variant, path):
    torch.manual_seed(hash((variant, path)) % 1000)
    c, f, k, stride, padding, dilation, groups = PATHS[path]
    layer = LinearConv2d(c, f, k, stride, padding, dilation, groups, variant=variant, **VARIANTS[variant],
                         sparsity_ramp=0).to(DEVICE)
    x = torch.randn(2, c, 6, 5, device=DEVICE, requires_grad=True)
    assert layer.explain(x).backend == ("triton" if path == "triton" else "fallback")
    y = layer(x)
    grad = torch.randn_like(y)
    y.backward(grad)

    # float64 oracle: compose the bank from the same parameters (and mask) and run F.conv2d
    params64 = {name: t.detach().double().requires_grad_(True) for name, t in layer.named_parameters()}
    x64 = x.detach().double().requires_grad_(True)
    if variant == "sparse":
        coefficients = params64["coeff"] * layer.mask
        assert (~layer.mask).sum().item() == int(0.5 * layer.mask.numel())
    elif "coeff" in params64:
        coefficients = params64["coeff"]
    else:
        coefficients = params64["coeff_u"] @ params64["coeff_v"]
    y64 = reference.reference_forward(x64, params64["weight"], coefficients, params64["bias"], stride, padding,
                                      dilation, groups)
    y64.backward(grad.double())

    assert y.shape == y64.shape and y.dtype == torch.float32
    assert relative_error(y, y64) < TOLERANCE, "forward"
    assert relative_error(x.grad, x64.grad) < TOLERANCE, "grad of input"
    for name, param in layer.named_parameters():
        assert relative_error(param.grad, params64[name].grad) < TOLERANCE, f"grad of {name}"


def test_float64_gradcheck_through_the_triton_conv():
    torch.manual_seed(0)
    layer = LinearConv2d(2, 4, 3, padding=1, variant="lowrank", rank=1).to(DEVICE, torch.float64)
    x = torch.randn(1, 2, 3, 4, device=DEVICE, dtype=torch.float64, requires_grad=True)

    def run(x, weight, u, v, bias):
        return dense.dense_conv2d(x, reference.compose_bank(weight, u @ v), bias, 1, 1, 1, 1)

    with use_backend("triton"):
        assert torch.autograd.gradcheck(run, (x, layer.weight, layer.coeff_u, layer.coeff_v, layer.bias),
                                        fast_mode=True)  # random projections: a few interpreter runs, not hundreds


def test_parameter_shapes_and_counts():
    c, f, k = 6, 9, 3
    p = f // 2
    vanilla = LinearConv2d(c, f, k)
    assert vanilla.weight.shape == (p, c, k, k) and vanilla.coeff.shape == (f - p, p)
    assert sum(t.numel() for t in vanilla.parameters()) == p * c * k * k + (f - p) * p + f
    grouped = LinearConv2d(c, 8, k, groups=2, bias=False)
    assert grouped.weight.shape == (4, 3, k, k)
    assert sum(t.numel() for t in grouped.parameters()) == 4 * 3 * k * k + 4 * 4
    lowrank = LinearConv2d(c, f, k, variant="lowrank", rank=2)
    assert lowrank.coeff_u.shape == (f - p, 2) and lowrank.coeff_v.shape == (2, p)
    ratio = LinearConv2d(c, 16, k, variant="rankratio", rank=0.25)
    assert ratio.coeff_u.shape == (8, 2) and ratio.coeff_v.shape == (2, 8)
    sparse = LinearConv2d(c, f, k, variant="sparse", sparsity=0.3)
    assert "mask" in dict(sparse.named_buffers()) and "mask" not in dict(sparse.named_parameters())
    for layer in (vanilla, grouped, lowrank, ratio, sparse):
        assert layer.spec((1, layer.in_channels, 8, 8)).parameter_count() == sum(t.numel() for t in layer.parameters())


def test_cost_is_the_dense_conv():
    layer = LinearConv2d(8, 16, 3, stride=2, padding=1)
    dense = torch.nn.Conv2d(8, 16, 3, 2, 1)
    shape = (2, 8, 9, 9)
    assert layer.cost(shape).macs == count_macs(dense, shape) == 2 * 5 * 5 * 16 * 8 * 9
    assert count_macs(torch.nn.Sequential(layer), shape) == layer.cost(shape).macs


# ---- the sparse variant ----------------------------------------------------------------------------

def test_sparse_mask_ramps_to_the_target_and_only_in_training():
    torch.manual_seed(1)
    layer = LinearConv2d(3, 20, 1, variant="sparse", sparsity=0.6, sparsity_ramp=4)
    x = torch.randn(1, 3, 2, 2)
    total = layer.mask.numel()
    with use_backend("fallback"):
        fractions = []
        for _ in range(6):
            layer(x)
            fractions.append((~layer.mask).sum().item() / total)
        assert fractions == sorted(fractions) and fractions[0] > 0
        assert fractions[-1] == pytest.approx(int(0.6 * total) / total)
        assert layer.mask_step.item() == 6
        # the zeros are the smallest |coeff|
        kept, pruned = layer.coeff.abs()[layer.mask], layer.coeff.abs()[~layer.mask]
        assert pruned.max() <= kept.min()
        # pruned coefficients get no gradient; L really is sparse
        layer.zero_grad()
        layer(x).sum().backward()
        assert torch.all(layer.coeff.grad[~layer.mask] == 0)
        assert (layer.coefficients() == 0).sum().item() >= int(0.6 * total)
        # eval mode leaves the mask alone
        layer.eval()
        before = layer.mask.clone()
        layer(x)
        assert torch.equal(layer.mask, before) and layer.mask_step.item() == 7


# ---- correlation loss --------------------------------------------------------------------------------

def numpy_correlation_loss(weights):
    total = 0.0
    for w in weights:
        rows = w.reshape(w.shape[0], -1).double().numpy()
        r = np.corrcoef(rows)
        total += np.abs(np.clip(r, -1, 1) - np.eye(len(rows))).sum()
    return total


def test_correlation_loss_matches_numpy_and_is_differentiable():
    torch.manual_seed(2)
    model = torch.nn.Sequential(LinearConv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Sequential(LinearConv2d(8, 12, 1)),
                                torch.nn.Conv2d(12, 4, 1))
    loss = correlation_loss(model)
    expected = numpy_correlation_loss([m.weight.detach() for m in model.modules() if isinstance(m, LinearConv2d)])
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert all(torch.isfinite(m.weight.grad).all() and m.weight.grad.abs().sum() > 0
               for m in model.modules() if isinstance(m, LinearConv2d))
    assert correlation_loss(torch.nn.Conv2d(3, 3, 1)).item() == 0


def test_correlation_loss_with_a_constant_filter_has_no_nan():
    layer = LinearConv2d(2, 6, 3)
    with torch.no_grad():
        layer.weight[1] = 0.5
    loss = correlation_loss(layer)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(layer.weight.grad).all()
    # the constant row correlates 0 with everything: |0 - 1| on its diagonal, 0 elsewhere in its row and column
    others = numpy_correlation_loss([layer.weight.detach()[[0, 2]]])
    assert loss.item() == pytest.approx(others + 1, rel=1e-5)


# ---- the bank follows every write ------------------------------------------------------------------------

@pytest.mark.parametrize("write", ["in place", "through .data", "load_state_dict"])
def test_eval_mode_sees_every_write_to_the_parameters(write):
    """EMA updates and older training code write through ``.data``, which no version counter sees: an
    eval-mode layer must still use the new values (a cached bank served stale filters)."""
    torch.manual_seed(3)
    layer = LinearConv2d(3, 6, 3, padding=1, variant="lowrank", rank=2).eval()
    x = torch.randn(1, 3, 4, 4)
    with use_backend("fallback"), torch.no_grad():
        layer(x)
        state = {k: v * 2 for k, v in layer.state_dict().items()}
        if write == "in place":
            layer.coeff_u.mul_(2)
            layer.weight.mul_(2)
        elif write == "through .data":
            layer.coeff_u.data.mul_(2)
            layer.weight.data.mul_(2)
        else:
            layer.load_state_dict({**layer.state_dict(), "coeff_u": state["coeff_u"], "weight": state["weight"]})
        expected = torch.nn.functional.conv2d(x, reference.compose_bank(layer.weight, layer.coefficients()),
                                              layer.bias, padding=1)
        torch.testing.assert_close(layer(x), expected)


def test_eval_mode_under_torch_compile_fullgraph():
    """Two eval-mode calls of a compiled layer (the bank cache's data-pointer check broke the second)."""
    torch._dynamo.reset()
    torch.manual_seed(4)
    layer = LinearConv2d(3, 7, 3, padding=1, variant="rankratio", rank=1.0).eval()
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, 4, 4)
    with use_backend("fallback"):
        expected = layer(x)
        for _ in range(2):
            torch.testing.assert_close(compiled(x), expected)
        with torch.no_grad():
            layer.weight.data.mul_(-1)
        torch.testing.assert_close(compiled(x), layer(x))


def test_sparse_two_training_forwards_before_one_backward():
    """The mask is re-thresholded by each training forward; a forward saved for backward keeps its own."""
    torch.manual_seed(6)
    layer = LinearConv2d(3, 6, 3, padding=1, variant="sparse", sparsity=0.5, sparsity_ramp=4)
    x = torch.randn(2, 3, 4, 4)
    with use_backend("fallback"):
        first = layer(x)
        second = layer(x)
        (first.sum() + second.sum()).backward()
    assert layer.coeff.grad is not None and torch.isfinite(layer.coeff.grad).all()


# ---- conversion ----------------------------------------------------------------------------------------

def test_from_conv2d_is_exact_when_the_filters_are_combinations():
    torch.manual_seed(5)
    conv = torch.nn.Conv2d(4, 8, 3, padding=1)
    with torch.no_grad():
        conv.weight[4:] = (torch.randn(4, 4) @ conv.weight[:4].reshape(4, -1)).reshape(4, 4, 3, 3)
    x = torch.randn(2, 4, 5, 5)
    with use_backend("fallback"):
        for variant, kwargs in [("vanilla", {}), ("sparse", {"sparsity": 0.5}), ("lowrank", {"rank": 4})]:
            layer = LinearConv2d.from_conv2d(conv, variant=variant, **kwargs).eval()
            torch.testing.assert_close(layer(x), conv(x), rtol=1e-4, atol=1e-4)
        generic = LinearConv2d.from_conv2d(torch.nn.Conv2d(4, 8, 3, padding=1))  # not exact, but the right shape
        assert generic(x).shape == (2, 8, 5, 5)
    with pytest.raises(ValueError, match="not square"):
        LinearConv2d.from_conv2d(torch.nn.Conv2d(4, 8, (3, 1)))
    with pytest.raises(TypeError, match="conv must be an nn.Conv2d"):
        LinearConv2d.from_conv2d(torch.nn.Linear(4, 8))


def test_torch_compile_fullgraph_training_step():
    torch.manual_seed(6)
    model = torch.nn.Sequential(LinearConv2d(3, 6, 3, padding=1), torch.nn.ReLU(),
                                LinearConv2d(6, 4, 3, padding=0)).to(DEVICE)
    x = torch.randn(1, 3, 5, 5, device=DEVICE)
    eager = model(x)
    eager.sum().backward()
    grads = [t.grad.clone() for t in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True, dynamic=False,  # HetConv's shape function needs concrete sizes
                             backend="aot_eager" if DEVICE.type == "cpu" else "inductor")
    out = compiled(x)
    out.sum().backward()
    torch.testing.assert_close(out, eager)
    for got, want in zip([t.grad for t in model.parameters()], grads):
        torch.testing.assert_close(got, want)


def test_batch_of_zero_and_autocast():
    layer = LinearConv2d(3, 6, 3, padding=1).to(DEVICE)
    x = torch.randn(0, 3, 4, 4, device=DEVICE, requires_grad=True)
    y = layer(x)
    assert y.shape == (0, 6, 4, 4)
    y.sum().backward()
    x = torch.randn(1, 3, 4, 4, device=DEVICE)
    with torch.autocast(DEVICE.type, dtype=torch.float16):
        y = layer(x)
    assert y.dtype == torch.float16
    expected = reference.reference_forward(x.double(), layer.weight.double(), layer.coeff.double(),
                                           layer.bias.double(), 1, 1, 1, 1)
    assert relative_error(y, expected) < 2e-3


# ---- bad input -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, match", [
    (dict(variant="dense"), ValueError, "variant='dense' is not a LinearConv variant"),
    (dict(variant="lowrank"), ValueError, "rank=None must be an int in \\[1, 4\\]"),
    (dict(variant="lowrank", rank=5), ValueError, "rank=5"),
    (dict(variant="rankratio", rank=1.5), ValueError, "rank=1.5 must be a float in \\(0, 1\\]"),
    (dict(variant="rankratio", rank=0.1), ValueError, "int\\(P\\*rank\\) = int\\(4\\*0.1\\) = 0"),
    (dict(variant="sparse"), ValueError, "sparsity=None must be a float in \\[0, 1\\)"),
    (dict(variant="sparse", sparsity=1.0), ValueError, "sparsity=1.0"),
    (dict(sparsity=0.5), ValueError, "sparsity=0.5 is only used by variant='sparse'"),
    (dict(rank=2), ValueError, "rank=2 is only used by"),
    (dict(groups=3), ValueError, "groups=3 must divide both in_channels=4 and out_channels=8"),
    (dict(out_channels=1), ValueError, "out_channels=1 must be an int >= 2"),
    (dict(padding=-1), ValueError, "padding=-1"),
    (dict(kernel_size=0), ValueError, "kernel_size=0"),
])
def test_bad_hyperparameters(kwargs, error, match):
    arguments = dict(in_channels=4, out_channels=8, kernel_size=3) | kwargs
    with pytest.raises(error, match=match):
        LinearConv2d(**arguments)


def test_bad_inputs_get_clear_errors():
    layer = LinearConv2d(4, 8, 3, padding=1).to(DEVICE)
    with pytest.raises(ValueError, match="input has 3 channels .* expected in_channels=4"):
        layer(torch.randn(1, 3, 5, 5, device=DEVICE))
    with pytest.raises(ValueError, match="input must have 4 dimensions"):
        layer(torch.randn(4, 5, 5, device=DEVICE))
    with pytest.raises(TypeError, match="input has dtype int32"):
        layer(torch.ones(1, 4, 5, 5, device=DEVICE, dtype=torch.int32))
    with pytest.raises(TypeError, match="weight has dtype float32 but input has float16"):
        layer(torch.randn(1, 4, 5, 5, device=DEVICE, dtype=torch.float16))
    with pytest.raises(TypeError, match="module must be an nn.Module"):
        correlation_loss(torch.randn(3))
