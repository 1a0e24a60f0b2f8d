"""What every layer must survive in training and inference, run over every layer in ``layer_cases``.

Each test runs the layer through the Triton kernels (under the interpreter on the CPU) and checks it
against the float64 fallback. Outputs the library allocates are filled with NaN first (conftest), so
an element a kernel forgets to write fails here too.
"""

from __future__ import annotations

import copy
import inspect
import threading

import pytest
import torch
from torch import nn

import tritonconv
from tritonconv import dispatch
from tritonconv.adapter import relative_error

from conftest import DEVICE
from layer_cases import CASES, LayerCase, layer_classes, oracle

TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4 if DEVICE.type == "cpu" else 3e-3, torch.float16: 5e-3,
             torch.bfloat16: 3e-2}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    if expected.numel():
        error = relative_error(actual, expected)
        assert error < TOLERANCE[dtype], f"{what}: relative error {error:.3g}"


def make(case: LayerCase, dtype=torch.float32, *, train: bool = True, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    module = case.build(device=DEVICE, dtype=dtype).train(train)
    for buffer in module.buffers():  # batch-norm statistics away from their init, so eval mode is no identity
        if buffer.dtype.is_floating_point:
            buffer.copy_(torch.rand_like(buffer) + 0.5)
    return module


def make_for_gradients(case: LayerCase) -> nn.Module:
    """Batch-norm layers in eval mode: in training mode a BN after BN makes some parameter gradients
    vanish mathematically, and a relative error of float32 rounding noise means nothing."""
    return make(case, train=not case.has_batch_norm)


def sample(case: LayerCase, dtype=torch.float32, *, seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(case.input_shape, device=DEVICE, dtype=dtype)


def check_gradients(case, module, x, *, dtype=torch.float32, backend="triton", output_gradient=torch.randn_like,
                    call=lambda module, x: module(x)):
    """Forward (``call``) and backward through ``backend``, the output gradient made by ``output_gradient``;
    every gradient that exists against the float64 oracle."""
    reference = copy.deepcopy(module)
    with tritonconv.use_backend(backend):
        y = call(module, x)
        grad = output_gradient(y)
        if y.requires_grad:
            y.backward(grad)
    y64, grads64 = oracle(reference, x, grad)
    assert_close(y, y64, dtype, f"{case} forward")
    for name, param in module.named_parameters():
        if param.requires_grad and name not in grads64:  # the call does not use it (e.g. no ghost maps kept)
            assert param.grad is None or not param.grad.any(), f"{case}: unused {name} got a gradient"
        elif param.requires_grad:
            assert_close(param.grad, grads64[name], dtype, f"{case} grad of {name}")
        else:
            assert param.grad is None, f"{case}: frozen {name} got a gradient"
    if x.requires_grad:
        assert_close(x.grad, grads64["input"], dtype, f"{case} grad of the input")


@pytest.fixture(params=CASES, ids=str)
def case(request) -> LayerCase:
    return request.param


def test_every_layer_has_a_case():
    covered = {type(case.build(device="meta")) for case in CASES}
    assert layer_classes() - covered == set(), "add a LayerCase to tests/layer_cases.py"


# ---- gradients that are not needed ------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["triton", "fallback"])
def test_input_without_grad(case, backend):
    """The first layer of a network: the input needs no gradient (HetConv2d has no bias by default)."""
    check_gradients(case, make_for_gradients(case), sample(case), backend=backend)


@pytest.mark.parametrize("frozen", ["all", "first"])
def test_frozen_parameters(case, frozen):
    module = make_for_gradients(case)
    params = list(module.parameters())
    for param in params if frozen == "all" else params[:1]:
        param.requires_grad_(False)
    check_gradients(case, module, sample(case).requires_grad_(True))


def test_input_and_every_parameter(case):
    check_gradients(case, make_for_gradients(case), sample(case).requires_grad_(True))


def test_expanded_output_gradient(case):
    """``y.sum().backward()`` hands the backward a gradient with all-zero strides (an expanded scalar)."""
    check_gradients(case, make_for_gradients(case), sample(case).requires_grad_(True),
                    output_gradient=lambda y: torch.ones((), dtype=y.dtype).expand_as(y))


def test_activation_checkpointing(case):
    """torch.utils.checkpoint (non-reentrant) runs the forward again inside the backward."""
    from torch.utils.checkpoint import checkpoint
    check_gradients(case, make_for_gradients(case), sample(case).requires_grad_(True),
                    call=lambda module, x: checkpoint(module, x, use_reentrant=False))


# ---- layouts of the parameters and the input ----------------------------------------------------------
def _strided_copy(t: torch.Tensor) -> torch.Tensor:
    """The same values through a non-contiguous view: every other slice of a twice-as-large first
    dimension that is not 1, and for 4-D weights in channels_last order (``model.to(memory_format=
    torch.channels_last)`` does that to every conv weight)."""
    dim = next((d for d, size in enumerate(t.shape) if size > 1), 0)
    shape = list(t.shape)
    shape[dim] *= 2
    wide = torch.full(shape, float("nan"), device=t.device, dtype=t.dtype)
    if t.dim() == 4:
        wide = wide.contiguous(memory_format=torch.channels_last)
    view = wide[(slice(None),) * dim + (slice(None, None, 2),)]
    view.copy_(t)
    return view


def test_strided_and_view_parameters(case):
    """Parameters that are views (e.g. ``load_state_dict(assign=True)`` from slices) are read through
    their strides, on both backends alike."""
    module = make_for_gradients(case)
    for name, param in list(module.named_parameters()):
        owner_name, _, attr = name.rpartition(".")
        owner = module.get_submodule(owner_name)
        view = _strided_copy(param.detach())
        assert torch.equal(view, param.detach())
        setattr(owner, attr, nn.Parameter(view))
    check_gradients(case, module, sample(case).requires_grad_(True))


@pytest.mark.parametrize("layout", ["channels_last", "channel_slice", "permuted"])
def test_input_layouts(case, layout):
    x = sample(case)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "channel_slice":
        b, c, h, w = x.shape
        x = torch.cat([x, torch.randn(b, 3, h, w, device=DEVICE)], 1)[:, :c]
    else:
        x = x.transpose(2, 3).contiguous().transpose(2, 3)
    check_gradients(case, make_for_gradients(case), x.requires_grad_(True))


@pytest.mark.parametrize("layout", ["channel_slice", "channels_last_slice"])
def test_compacted_views_keep_the_layouts_torch_expects(case, layout, monkeypatch):
    """A view the launchers read through a compact copy (an image spanning 2^31 elements inside a wider
    tensor; here every view, by a threshold of 0) still gets its output and input gradient in the layout
    the fallback and the operators' fakes give: a compiled graph's stride assumptions must hold."""
    from tritonconv import _layout
    from tritonconv.ops.depthwise import launch as depthwise_launch
    from tritonconv.ops.dwsep import launch as dwsep_launch
    from tritonconv.ops.shift import launch as shift_launch
    from tritonconv.ops.shuffle import launch as shuffle_launch
    from tritonconv.ops.versatile import launch as versatile_launch

    def always_compact(t):
        channels_innermost = t.dim() == 4 and t.stride(1) == 1
        return t.contiguous(memory_format=torch.channels_last if channels_innermost else torch.contiguous_format)

    for module in (_layout, depthwise_launch, dwsep_launch, shift_launch, shuffle_launch, versatile_launch):
        if hasattr(module, "int32_addressable"):
            monkeypatch.setattr(module, "int32_addressable", always_compact)
    x = sample(case)
    b, c, h, w = x.shape
    wide = torch.cat([x, torch.randn(b, 3, h, w, device=DEVICE)], 1)
    if layout == "channels_last_slice":
        wide = wide.contiguous(memory_format=torch.channels_last)
    x = wide[:, :c]
    results = {}
    for backend in ("triton", "fallback"):
        module, view = make(case), x.detach().requires_grad_(True)
        with tritonconv.use_backend(backend):
            y = module(view)
            y.backward(torch.ones_like(y))
        results[backend] = (y.stride(), view.grad.stride())
    assert results["triton"] == results["fallback"], results


def test_batch_zero(case):
    module = make(case)
    x = torch.empty((0, *case.input_shape[1:]), device=DEVICE).requires_grad_(True)
    y = module(x)
    expected, _ = oracle(module, x)
    assert y.shape == expected.shape
    y.sum().backward()
    assert x.grad.shape == x.shape
    for name, param in module.named_parameters():
        if param.grad is not None:
            assert torch.count_nonzero(param.grad) == 0, name


# ---- NaN and Inf stay where the maths puts them --------------------------------------------------
def test_nan_and_inf_locality(case):
    """One NaN (or Inf) in the input reaches exactly the outputs that the published formulation, in
    float64, makes non-finite: those that read it. Kernels that multiply unread inputs by zero, or
    drop NaN in a max, fail here."""
    module = make(case, train=not case.has_batch_norm)
    x = sample(case)
    b, c, h, w = x.shape
    reached = 0
    for index in [(0, 0, 0, 0), (b - 1, c - 1, h // 2, w - 1)]:
        for value in (float("nan"), float("inf"), -float("inf")):
            poisoned = x.clone()
            poisoned[index] = value
            expected, _ = oracle(module, poisoned)
            with tritonconv.use_backend("triton"):
                y = module(poisoned)
            wrong = torch.isfinite(y) != torch.isfinite(expected)
            assert not wrong.any(), f"{case}: {value} at {index} gives {int(wrong.sum())} outputs of the wrong kind"
            reached += int((~torch.isfinite(expected)).sum())
            assert_close(y[torch.isfinite(y)], expected[torch.isfinite(expected)], torch.float32,
                         f"{case} finite outputs next to {value}")
    assert reached, "no output read the poisoned inputs: the test would prove nothing"


def test_output_gradient_nan_and_inf_locality(case):
    """One NaN (or Inf) in the output gradient reaches exactly the input-gradient elements that the
    published formulation, in float64, makes non-finite: a backward that multiplies a gradient by the
    zeros of weights it does not use (0 * NaN = NaN) spreads it."""
    module = make(case, train=not case.has_batch_norm)
    x = sample(case).requires_grad_(True)
    with tritonconv.use_backend("triton"), torch.no_grad():
        y = module(x)
    # outputs a final ReLU passes (where it blocks, torch's backward drops the gradient: NaN included)
    active = torch.nonzero(y != 0)
    reached = 0
    for index in [tuple(active[0].tolist()), tuple(active[-1].tolist())]:
        for value in (float("nan"), float("inf")):
            grad = torch.randn(y.shape, device=DEVICE)
            grad[index] = value
            _, grads64 = oracle(module, x.detach(), grad)
            x.grad = None
            with tritonconv.use_backend("triton"):
                module(x).backward(grad)
            wrong = torch.isfinite(x.grad) != torch.isfinite(grads64["input"])
            assert not wrong.any(), f"{case}: {value} at {index} gives {int(wrong.sum())} input grads of the wrong kind"
            reached += int((~torch.isfinite(grads64["input"])).sum())
    assert reached, "no input gradient read the poisoned output gradient: the test would prove nothing"


def test_gradients_keep_their_parameters_strides_after_channels_last(case):
    """After ``model.to(memory_format=torch.channels_last)`` every gradient has its parameter's strides,
    size-1 dimensions included: DDP's buckets compare them exactly (and warn and copy otherwise)."""
    module = make(case).to(memory_format=torch.channels_last)
    x = sample(case).contiguous(memory_format=torch.channels_last)
    with tritonconv.use_backend("triton"):
        module(x).square().sum().backward()
    for name, param in module.named_parameters():
        if param.grad is not None:
            assert param.grad.stride() == param.stride(), f"{case}: grad of {name} {param.grad.stride()} " \
                                                          f"vs {param.stride()}"


# ---- autocast, torch.compile, meta ---------------------------------------------------------------
AUTOCAST_DTYPES = [torch.bfloat16, torch.float16]


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", AUTOCAST_DTYPES, ids=str)
def test_autocast(case, dtype, train):
    module = make(case, train=train)
    x = sample(case).requires_grad_(True)
    reference = copy.deepcopy(module)
    with torch.autocast(DEVICE.type, dtype=dtype):
        y = module(x)
    want = torch.promote_types(dtype, x.dtype) if case.residual else dtype
    assert y.dtype == want, f"{case}: autocast to {dtype} gave {y.dtype}"
    y.float().sum().backward()
    expected, _ = oracle(reference, x)
    error = relative_error(y, expected)
    assert error < 2 * TOLERANCE[dtype], f"{case}: relative error {error:.3g} under {dtype} autocast"
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_cpu_bfloat16_is_computed_correctly(case):
    """The interpreter's bf16 arithmetic is wrong: CPU bf16 must not reach it, and explain says so."""
    if DEVICE.type != "cpu":
        pytest.skip("a CPU case")
    module = make(case, torch.bfloat16)
    x = sample(case, torch.bfloat16)
    y = module(x)
    expected, _ = oracle(module, x)
    assert relative_error(y, expected) < TOLERANCE[torch.bfloat16]
    if case.dispatched and hasattr(module, "explain"):
        decision = module.explain(x)
        assert decision.backend == "fallback" and "bfloat16" in decision.reason, decision


class _Recorder:
    """Records which backend every dispatch decision picked, per operator and pass."""

    def __init__(self, monkeypatch):
        self.taken = []
        original = dispatch.decide

        def decide(operator, spec, pass_, device, **kwargs):
            decision = original(operator, spec, pass_, device, **kwargs)
            self.taken.append((pass_, decision.backend))
            return decision

        monkeypatch.setattr(dispatch, "decide", decide)

    def backends(self, pass_: str) -> set[str]:
        return {backend for p, backend in self.taken if p == pass_}


def test_torch_compile_fullgraph_follows_use_backend(case, monkeypatch):
    """The backend forced around a compiled call governs its forward and its backward, on every call
    (not the one that was in force when the graph was traced)."""
    torch._dynamo.reset()
    module = make(case, train=not case.has_batch_norm)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    recorder = _Recorder(monkeypatch)
    x = sample(case).requires_grad_(True)
    for backend in ("triton", "fallback", "triton"):
        recorder.taken.clear()
        x.grad = None
        with tritonconv.use_backend(backend):
            y = compiled(x)
        grad = torch.randn_like(y)
        y.backward(grad)  # outside the block: the forward's choice still holds
        if case.dispatched:
            assert recorder.backends("forward") == {backend}, (backend, recorder.taken)
            assert recorder.backends("backward") == {backend}, (backend, recorder.taken)
        y64, grads64 = oracle(module, x, grad)
        assert_close(y, y64, torch.float32, f"{case} compiled forward ({backend})")
        assert_close(x.grad, grads64["input"], torch.float32, f"{case} compiled grad input ({backend})")


def test_compiled_backward_follows_its_own_forward(monkeypatch):
    """The forced backend a compiled backward takes is its own forward's: twice with retain_graph, and
    not a note an earlier eager forward of the same input left behind."""
    torch._dynamo.reset()
    case = next(c for c in CASES if c.name == "shuffle")
    module = make(case, train=False)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    recorder = _Recorder(monkeypatch)
    x = sample(case).requires_grad_(True)
    with tritonconv.use_backend("fallback"):
        y = compiled(x)
    y.sum().backward(retain_graph=True)
    y.sum().backward()
    assert recorder.backends("backward") == {"fallback"}, recorder.taken
    recorder.taken.clear()
    with tritonconv.use_backend("fallback"):
        module(x)  # eager, no backward: must leave nothing for the compiled call below
    y = compiled(x)
    y.sum().backward()
    assert recorder.backends("backward") == {"triton"}, recorder.taken


def test_meta_device(case):
    """Shape inference without data, as FLOP counters and model summaries do it."""
    module = case.build(device="meta")
    x = torch.empty(case.input_shape, device="meta", requires_grad=True)
    y = module(x)
    expected, _ = oracle(make(case), sample(case))
    assert y.device.type == "meta" and y.shape == expected.shape
    y.sum().backward()
    assert x.grad.shape == x.shape


def test_dispatch_modes_and_fake_tensors_see_the_operators(case):
    """An eager call skips torch's operator dispatch only where nothing could observe it: under a
    dispatch mode (FLOP counters, tracers) the forward and the backward reach our operators, and fake
    tensors get the operators' shapes, never a kernel launch."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.overrides import TorchFunctionMode
    from torch.utils._python_dispatch import TorchDispatchMode

    class Seen(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.add(func.namespace)
            return func(*args, **(kwargs or {}))

    module = make(case)
    x = sample(case).requires_grad_(True)
    with tritonconv.use_backend("triton"), dispatch.collecting() as calls:
        module(x)
    if not calls:  # plain torch ops throughout
        return
    with tritonconv.use_backend("triton"), Seen() as seen:
        module(x).sum().backward()
    assert "tritonconv" in seen.ops

    class Called(TorchFunctionMode):  # pre-dispatch tracing (make_fx(pre_dispatch=True), export) is one
        def __init__(self):
            super().__init__()
            self.names = set()

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.names.add(getattr(func, "__module__", "") or "")
            self.names.add(str(func))
            return func(*args, **(kwargs or {}))

    with tritonconv.use_backend("triton"), Called() as called:
        module(x)
    assert any("tritonconv" in name for name in called.names), called.names
    expected = module(x)
    with FakeTensorMode(allow_non_fake_inputs=True) as fake:
        y = module(fake.from_tensor(x))
    assert y.shape == expected.shape and y.stride() == expected.stride()


@pytest.mark.parametrize("backend", ["triton", "fallback"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_fake_gradients_have_the_real_ones_strides(case, backend, channels_last):
    """Under torch.compile a graph reads our operators' outputs with the strides their fakes give: every
    gradient's fake must be laid out as the real one (a channels_last weight's gradient included)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    module = make_for_gradients(case)
    x = sample(case)
    if channels_last:
        module, x = module.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    params = [p for p in module.parameters() if p.requires_grad]

    def gradients(x):
        x = x.requires_grad_()
        y = module(x)
        return torch.autograd.grad(y, [x, *params], torch.ones_like(y), allow_unused=True)

    with tritonconv.use_backend(backend):
        real = gradients(x.clone())
        with FakeTensorMode(allow_non_fake_inputs=True) as fake:
            faked = gradients(fake.from_tensor(x))
    for name, got, expected in zip(["input", *(n for n, p in module.named_parameters() if p.requires_grad)],
                                   faked, real, strict=True):
        if expected is not None:
            assert got.stride() == expected.stride(), name


def test_forward_mode_ad_raises_instead_of_dropping_the_tangent(case):
    """Forward-mode AD (jvp) is not supported: NotImplementedError, through the layer and through a direct
    call of its operator alike, never an output whose tangent is silently missing."""
    from torch.autograd import forward_ad

    module = make(case, train=False).requires_grad_(False)
    x = sample(case)
    with tritonconv.use_backend("triton"), dispatch.collecting() as calls:
        module(x)
    if not calls:  # plain torch ops throughout: torch's own forward AD
        return
    with forward_ad.dual_level(), tritonconv.use_backend("triton"):
        with pytest.raises(NotImplementedError, match="jvp"):
            module(forward_ad.make_dual(x, torch.randn_like(x)))


def test_direct_operator_calls_under_forward_mode_ad_raise():
    """The operators' own Autograd kernel sends a dual tensor to the Function (which raises), instead of
    below autograd, where the output's tangent would silently be None."""
    from torch.autograd import forward_ad

    layer = tritonconv.ShiftConv2d(18, 8).requires_grad_(False)
    x = torch.randn(2, 18, 5, 5)
    with forward_ad.dual_level():
        dual = forward_ad.make_dual(x, torch.randn_like(x))
        with pytest.raises(NotImplementedError, match="jvp"):
            torch.ops.tritonconv.shift_conv2d.default(dual, layer.weight, layer.bias, [3, 1, 1], "interleaved")


def test_inference_mode(case):
    """Serving code runs under torch.inference_mode (autograd's keys excluded, inputs are inference
    tensors without a version counter), with a backend forced too: same output as no_grad."""
    module = make(case, train=False)
    x = sample(case)
    with tritonconv.use_backend("triton"):
        with torch.no_grad():
            expected = module(x)
        with torch.inference_mode():
            y = module(x.clone())
    assert y.is_inference() and not y.requires_grad
    torch.testing.assert_close(y, expected)


def test_double_backward_raises_instead_of_wrong_gradients(case):
    """A gradient of a gradient (create_graph=True) through our operators is not supported: the first
    backward raises a RuntimeError naming the operator, instead of torch's default for an operator
    without a derivative (a warning, and second gradients that silently miss our part)."""
    module = make_for_gradients(case)
    x = sample(case).requires_grad_()
    with tritonconv.use_backend("triton"), dispatch.collecting() as calls:
        y = module(x)
    if not calls:  # plain torch ops throughout (LinearConv's low-rank cuDNN path): torch differentiates twice
        (dx,) = torch.autograd.grad(y, x, torch.randn_like(y), create_graph=True)
        assert dx.requires_grad
        return
    with pytest.raises(RuntimeError, match=r"tritonconv::\w+_backward is not differentiable \(double backward"):
        torch.autograd.grad(y, x, torch.randn_like(y), create_graph=True)


# ---- bad input ------------------------------------------------------------------------------------
def test_bad_constructor_arguments(case):
    if not case.bad_arguments:
        pytest.skip(f"{case} has no table of bad arguments")
    reference = case.build(device="meta")
    for kwargs, error, words in case.bad_arguments:
        with pytest.raises(error) as raised:
            _rebuild(reference, **kwargs)
        assert words in str(raised.value), f"{case} {kwargs}: {raised.value}"


def _rebuild(module, **changes):
    """The case's layer built again with some constructor arguments changed."""
    parameters = inspect.signature(type(module).__init__).parameters
    kwargs = {name: getattr(module, name) for name in parameters
              if name not in ("self", "device", "dtype") and hasattr(module, name)
              and parameters[name].kind is not inspect.Parameter.VAR_KEYWORD}
    if "bias" in kwargs and not isinstance(kwargs["bias"], bool):
        kwargs["bias"] = kwargs["bias"] is not None
    kwargs.update(changes)
    return type(module)(**kwargs, device="meta")


def bad_inputs(case: LayerCase):
    b, c, h, w = case.input_shape
    yield "not a tensor", [[0.0] * w] * h, TypeError, "input"
    yield "rank 3", torch.randn(c, h, w, device=DEVICE), ValueError, "input"
    yield "integer dtype", torch.zeros(case.input_shape, device=DEVICE, dtype=torch.int64), TypeError, "input"
    yield "wrong channels", torch.randn(b, c + 1, h, w, device=DEVICE), ValueError, str(c)
    yield "zero height", torch.randn(b, c, 0, w, device=DEVICE), ValueError, "input"
    if case.too_small:
        yield "smaller than the kernel", torch.randn(b, c, *case.too_small, device=DEVICE), ValueError, "input"


def test_bad_input(case):
    module = make(case)
    for label, x, error, words in bad_inputs(case):
        with pytest.raises(error) as raised:
            module(x)
        assert words in str(raised.value), f"{case} {label}: {raised.value}"


def test_input_dtype_must_match_the_weights(case):
    module = make(case)
    with pytest.raises(TypeError, match="dtype"):
        module(sample(case, torch.float64))


# ---- threads ------------------------------------------------------------------------------------
def test_concurrent_calls_from_threads(case):
    """Two threads calling the layer at once (the interpreter itself is not thread-safe)."""
    module = make(case, train=False)
    x = sample(case)
    with torch.no_grad(), tritonconv.use_backend("triton"):
        expected = module(x)
    results, errors = [], []

    def work():
        try:
            with torch.no_grad(), tritonconv.use_backend("triton"):
                for _ in range(2):
                    results.append(module(x))
        except Exception as error:  # reported below, with the thread's traceback text
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert all(torch.equal(r, expected) for r in results)
