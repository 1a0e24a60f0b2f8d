"""The depthwise weights' layout: the layers hold them taps-major ([k, k, OC] in memory, what the kernels
read without a copy), keep them so through what users do to a model, and nothing is cached beside them
(a write through ``.data`` bypasses every version counter)."""

import copy
import io

import pytest
import torch
import torch.nn.functional as F

from perf.audit import TorchOpCounter
from tritonconv.adapter import relative_error
from tritonconv.dispatch import use_backend
from tritonconv.ops.depthwise import DepthwiseConv2d, depthwise_conv2d, explain
from tritonconv.ops.depthwise.layout import grad_strides, is_taps_major, taps_major
from tritonconv.ops.dwsep import DepthwiseSeparableConv2d
from tritonconv.ops.ghost import GhostModule


def _depthwise_weights(layer):
    return {DepthwiseConv2d: lambda: layer.weight, DepthwiseSeparableConv2d: lambda: layer.dw_weight,
            GhostModule: lambda: layer.cheap_operation[0].weight}[type(layer)]()


def _layers():
    return {"depthwise": DepthwiseConv2d(8, 3, activation="relu6"),
            "dwsep": DepthwiseSeparableConv2d(8, 8, 3, activation="relu"),
            "ghost": GhostModule(4, 8, dw_size=3)}


def _reference(layer, x):
    """The layer's forward in float64 through torch's own ops, from its current parameters."""
    x = x.double()
    if isinstance(layer, DepthwiseConv2d):
        z = F.conv2d(x, layer.weight.double(), layer.bias.double(), layer.stride, layer.padding, layer.dilation,
                     layer.in_channels)
        return F.relu6(z)
    if isinstance(layer, DepthwiseSeparableConv2d):
        z = F.conv2d(x, layer.dw_weight.double(), layer.dw_bias.double(), layer.stride, layer.padding,
                     layer.dilation, layer.in_channels)
        return F.conv2d(F.relu(z), layer.pw_weight.double(), layer.pw_bias.double())
    with use_backend("fallback"):
        return copy.deepcopy(layer).double()(x)


def test_the_predicate():
    oc, k = 6, 3
    assert is_taps_major(torch.empty(k, k, oc, 1).permute(2, 3, 0, 1))
    assert is_taps_major(torch.empty(k, k, oc).permute(2, 0, 1).unsqueeze(1))  # another size-1 stride
    assert not is_taps_major(torch.empty(oc, 1, k, k))
    assert not is_taps_major(torch.empty(oc, 1, k, k).contiguous(memory_format=torch.channels_last))
    assert not is_taps_major(torch.empty(k, k, 2 * oc, 1).permute(2, 3, 0, 1)[:oc])  # not compact: copied
    assert is_taps_major(torch.empty(oc, 1, 1, 1)) and is_taps_major(torch.empty(1, 1, k, k))
    weight = torch.randn(oc, 1, k, k)
    relaid = taps_major(weight)
    assert is_taps_major(relaid) and torch.equal(relaid, weight) and taps_major(relaid) is relaid


@pytest.mark.parametrize("name", ["depthwise", "dwsep", "ghost"])
def test_the_layers_allocate_their_depthwise_weights_taps_major(name):
    layer = _layers()[name]
    assert is_taps_major(_depthwise_weights(layer))
    state = layer.state_dict()
    reference_keys = {"depthwise": ["weight", "bias"], "dwsep": ["dw_weight", "dw_bias", "pw_weight", "pw_bias"]}
    if name in reference_keys:
        assert list(state) == reference_keys[name]
    assert _depthwise_weights(layer).shape == ((4, 1, 3, 3) if name == "ghost" else (8, 1, 3, 3))


def _write(layer, how, name):
    """Change the layer's parameters the way ``how`` says; returns the layer to use afterwards."""
    weight = _depthwise_weights(layer)
    params = dict(layer.named_parameters())  # not the BatchNorms' running statistics
    if how == "in place":
        with torch.no_grad():
            weight.mul_(-2)
    elif how == "through .data":
        weight.data.mul_(-2)
    elif how == "load_state_dict":
        layer.load_state_dict({k: -2 * v if k in params else v for k, v in layer.state_dict().items()})
    elif how == "load_state_dict(assign=True)":
        layer.load_state_dict({k: (-2 * v).contiguous() if k in params else v
                               for k, v in layer.state_dict().items()}, assign=True)
    elif how == "channels_last":
        layer.to(memory_format=torch.channels_last)
    elif how == "to(float16) and back":
        layer.half().to(torch.float32)
    elif how == "deepcopy":
        layer = copy.deepcopy(layer)
    elif how == "torch.save":
        buffer = io.BytesIO()
        torch.save(layer.state_dict(), buffer)
        layer = _layers()[name].train(layer.training)
        layer.load_state_dict(torch.load(io.BytesIO(buffer.getvalue())))
    return layer


WRITES = ["in place", "through .data", "load_state_dict", "load_state_dict(assign=True)", "channels_last",
          "to(float16) and back", "deepcopy", "torch.save"]


@pytest.mark.parametrize("how", WRITES)
@pytest.mark.parametrize("name", ["depthwise", "dwsep", "ghost"])
def test_every_write_is_seen_and_the_layout_survives_it(name, how):
    """After each, the result matches the float64 reference (no stale copy of the weight anywhere) and
    the depthwise weight is taps-major again."""
    torch.manual_seed(0)
    layer = _layers()[name]
    if name == "ghost":
        layer.eval()  # the inference path: one depthwise launch
        for bn in (layer.primary_conv[1], layer.cheap_operation[1]):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, layer.in_channels, 7, 5)
    with torch.no_grad():
        layer(x)  # anything kept from this call would be stale after the write
        weight = _depthwise_weights(layer)
        layer = _write(layer, how, name)
        assert is_taps_major(_depthwise_weights(layer))
        if how in ("in place", "through .data", "channels_last", "to(float16) and back"):
            assert _depthwise_weights(layer) is weight  # the Parameter optimizers hold
        if how == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        out = layer(x)
    assert relative_error(out.double(), _reference(layer, x)) < 1e-5


@pytest.fixture
def launches(monkeypatch):
    """Our kernels' launches recorded, not run (the interpreter's own tensor ops would be counted too),
    and fresh buffers not filled with NaN: what is left for ``TorchOpCounter`` is the torch ops a GPU
    call issues beside our launches."""
    from triton.runtime.interpreter import InterpretedFunction

    from tritonconv import _layout

    recorded = []
    monkeypatch.setattr(InterpretedFunction, "run", lambda self, *args, grid, warmup, **kwargs: recorded.append(
        self.fn.__name__))
    monkeypatch.setattr(_layout, "allocate", torch.empty_strided)
    return recorded


def test_a_layer_call_copies_no_weight(launches):
    """DepthwiseConv2d forward and backward: our launches and no torch op beside them (no copy of the
    weight, none of its gradient), also after model.to(memory_format=channels_last)."""
    torch.manual_seed(1)
    layer = DepthwiseConv2d(8, 3, activation="relu6").to(memory_format=torch.channels_last)
    x = torch.randn(2, 8, 7, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    with TorchOpCounter() as forward:
        y = layer(x)
    assert (launches, forward.ops) == (["depthwise_fwd_kernel"], [])
    grad = torch.randn_like(y)
    launches.clear()
    with TorchOpCounter() as backward:
        y.backward(grad)  # into .grad: AccumulateGrad would copy a gradient in another layout
    assert (len(launches), backward.ops) == (3, []), (launches, backward.ops)
    weight = layer.weight
    assert weight.grad.stride() == weight.stride() and is_taps_major(weight.grad)  # DDP buckets need this
    assert "not taps-major" not in explain(x, weight, layer.bias, activation="relu6").reason


def test_a_plain_weight_through_the_functional_op_is_copied_once_per_call(launches):
    torch.manual_seed(2)
    weight = torch.randn(8, 1, 3, 3, requires_grad=True)  # contiguous, as nn.Conv2d allocates
    x = torch.randn(2, 8, 7, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    for _ in range(2):  # every call: nothing is cached
        with TorchOpCounter() as forward:
            y = depthwise_conv2d(x, weight, None, activation="relu")
        grad = torch.randn_like(y)
        with TorchOpCounter() as backward:
            dx, dw = torch.autograd.grad(y, (x, weight), grad)
        assert forward.ops == ["copy_"] and backward.ops == ["copy_"], (forward.ops, backward.ops)
        assert dw.stride() == weight.stride()  # written contiguous by the kernel: no copy of the gradient
    assert "not taps-major" in explain(x, weight, None, activation="relu").reason


@pytest.mark.parametrize("name", ["depthwise", "dwsep", "ghost"])
def test_the_weight_gradient_has_the_parameters_strides(name):
    """DDP warns ("grad strides do not match bucket view strides") and AccumulateGrad copies otherwise."""
    torch.manual_seed(3)
    layer = _layers()[name].to(memory_format=torch.channels_last)
    x = torch.randn(2, layer.in_channels, 7, 5).contiguous(memory_format=torch.channels_last)
    layer(x).sum().backward()
    weight = _depthwise_weights(layer)
    assert weight.grad.stride() == weight.stride() == grad_strides(weight, weight.shape)


# ---- VersatileConv2d: its weight [n_w, c_hat, k, k] taps-major, [k*k, n_w, c_hat] in memory ----------------
def test_the_shared_predicate_is_tap_axis_outermost_then_the_rest_contiguous():
    n_w, c_hat, k = 3, 5, 3
    assert is_taps_major(torch.empty(k, k, n_w, c_hat).permute(2, 3, 0, 1))
    assert not is_taps_major(torch.empty(n_w, c_hat, k, k))
    assert not is_taps_major(torch.empty(n_w, c_hat, k, k).contiguous(memory_format=torch.channels_last))
    assert not is_taps_major(torch.empty(k, k, c_hat, n_w).permute(3, 2, 0, 1))  # [k, k, c_hat, n_w]: not ours
    assert not is_taps_major(torch.empty(k, k, n_w, 2 * c_hat).permute(2, 3, 0, 1)[:, :c_hat])  # not compact


def _versatile():
    from tritonconv.ops.versatile import VersatileConv2d
    return VersatileConv2d(6, 12, kernel_size=3, delta=2, g=2)  # s_num 2, n_c 2, n_w 3, c_hat 4


def _versatile_reference(layer, x):
    with use_backend("fallback"):
        return copy.deepcopy(layer).double()(x.double())


def test_versatile_allocates_its_weight_taps_major_and_keeps_the_state_dict():
    layer = _versatile()
    assert is_taps_major(layer.weight) and not layer.weight.is_contiguous()
    assert list(layer.state_dict()) == ["weight", "bias"] and layer.weight.shape == (3, 4, 3, 3)


@pytest.mark.parametrize("how", WRITES)
def test_versatile_sees_every_write_and_keeps_the_layout(how):
    torch.manual_seed(4)
    layer = _versatile()
    x = torch.randn(2, 6, 7, 5)
    with torch.no_grad():
        layer(x)
        weight = layer.weight
        if how == "torch.save":
            buffer = io.BytesIO()
            torch.save(layer.state_dict(), buffer)
            layer = _versatile()
            layer.load_state_dict(torch.load(io.BytesIO(buffer.getvalue())))
        else:
            params = dict(layer.named_parameters())
            layer = _write_versatile(layer, how, params)
        assert is_taps_major(layer.weight)
        if how in ("in place", "through .data", "channels_last", "to(float16) and back"):
            assert layer.weight is weight
        if how == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        out = layer(x)
    assert relative_error(out.double(), _versatile_reference(layer, x)) < 1e-5


def _write_versatile(layer, how, params):
    if how == "in place":
        with torch.no_grad():
            layer.weight.mul_(-2)
    elif how == "through .data":
        layer.weight.data.mul_(-2)
    elif how == "load_state_dict":
        layer.load_state_dict({k: -2 * v for k, v in layer.state_dict().items()})
    elif how == "load_state_dict(assign=True)":
        layer.load_state_dict({k: (-2 * v).contiguous() for k, v in layer.state_dict().items()}, assign=True)
    elif how == "channels_last":
        layer.to(memory_format=torch.channels_last)
    elif how == "to(float16) and back":
        layer.half().to(torch.float32)
    elif how == "deepcopy":
        layer = copy.deepcopy(layer)
    return layer


def test_a_versatile_layer_call_copies_no_weight(launches):
    """Forward one launch, backward three (input gradient, weight and bias partials, their sum), no torch
    op beside them; the weight gradient has the parameter's strides."""
    from tritonconv.ops.versatile import explain as versatile_explain

    torch.manual_seed(5)
    layer = _versatile().to(memory_format=torch.channels_last)
    x = torch.randn(2, 6, 7, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    with TorchOpCounter() as forward:
        y = layer(x)
    assert (launches, forward.ops) == (["versatile_fwd_kernel"], [])
    grad = torch.randn_like(y)
    launches.clear()
    with TorchOpCounter() as backward:
        y.backward(grad)
    assert (len(launches), backward.ops) == (3, []), (launches, backward.ops)
    weight = layer.weight
    assert weight.grad.stride() == weight.stride() and is_taps_major(weight.grad)
    assert "not taps-major" not in versatile_explain(x, weight, layer.bias, 12, delta=2, g=2).reason


def test_a_plain_versatile_weight_through_the_functional_op_is_copied_once_per_call(launches):
    from tritonconv.ops.versatile import explain as versatile_explain
    from tritonconv.ops.versatile import versatile_conv2d

    torch.manual_seed(6)
    weight = torch.randn(3, 4, 3, 3, requires_grad=True)  # contiguous
    x = torch.randn(2, 6, 7, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    for _ in range(2):  # every call: nothing is cached
        with TorchOpCounter() as forward:
            y = versatile_conv2d(x, weight, None, 12, delta=2, g=2)
        grad = torch.randn_like(y)
        with TorchOpCounter() as backward:
            dx, dw = torch.autograd.grad(y, (x, weight), grad)
        assert forward.ops == ["copy_"] and backward.ops == ["copy_"], (forward.ops, backward.ops)
        assert dw.stride() == weight.stride()  # written contiguous by the kernels: no copy of the gradient
    assert "not taps-major" in versatile_explain(x, weight, None, 12, delta=2, g=2).reason


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_the_versatile_weight_gradient_has_the_parameters_strides_and_values(memory_format):
    torch.manual_seed(7)
    layer = _versatile().double().to(memory_format=memory_format)
    x = torch.randn(2, 6, 7, 5, dtype=torch.float64).contiguous(memory_format=memory_format)
    grad = torch.randn(2, 12, 7, 5, dtype=torch.float64)
    layer(x).backward(grad)
    reference = _versatile().double()
    reference.load_state_dict(layer.state_dict())
    with use_backend("fallback"):
        reference(x).backward(grad)
    assert layer.weight.grad.stride() == layer.weight.stride()
    assert relative_error(layer.weight.grad, reference.weight.grad) < 1e-10
    assert relative_error(layer.bias.grad, reference.bias.grad) < 1e-10
