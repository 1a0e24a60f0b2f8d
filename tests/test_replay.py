"""``tritonconv._replay``: an eager call whose key matches an earlier call's runs that call's launches
again. Every layer's replayed forward and backward against its body's, bit for bit, on fresh inputs (the
buffers NaN-filled: an element a replay leaves unwritten fails); what makes a call a new key, or one never
replayed; the direct CUDA launch with a stand-in compiled kernel (on a GPU: the real one)."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from test_launcher import FakeDriver, FakeKernel

import tritonconv
from tritonconv import _launcher, _layout, _replay, dispatch

from layer_cases import CASES

DISPATCHED = [case for case in CASES if case.dispatched]


@pytest.fixture
def replays(monkeypatch):
    """The number of replayed calls so far (``replays()``)."""
    count = [0]
    run = _replay.Replay.run

    def counted(self, *args):
        count[0] += 1
        return run(self, *args)

    monkeypatch.setattr(_replay.Replay, "run", counted)
    return lambda: count[0]


@pytest.fixture
def launches(monkeypatch):
    """The number of kernel launches so far, replayed ones included (``launches()``)."""
    count = [0]
    launch = _launcher._launch

    def counted(*args):
        count[0] += 1
        return launch(*args)

    monkeypatch.setattr(_launcher, "_launch", counted)
    return lambda: count[0]


def _module_and_inputs(case, device, channels_last: bool):
    torch.manual_seed(0)
    module = case.build(device=device, dtype=torch.float64)
    if case.has_batch_norm:
        module.eval()
    inputs = [torch.randn(case.input_shape, device=device, dtype=torch.float64) for _ in range(2)]
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
        inputs = [x.contiguous(memory_format=torch.channels_last) for x in inputs]
    return module, inputs


def _step(module, x, grad_seed: int):
    """Output and every gradient of one training step (detached clones)."""
    x = x.clone().requires_grad_()
    module.zero_grad(set_to_none=True)
    y = module(x)
    grad = torch.empty_like(y)  # in y's layout, as the next layer's gradient usually is
    grad.copy_(torch.randn(y.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=y.dtype))
    y.backward(grad)
    grads = [x.grad] + [p.grad for p in module.parameters() if p.grad is not None]
    return [t.detach().clone() for t in (y, *grads)], y.stride()


@pytest.mark.parametrize("case", DISPATCHED, ids=str)
def test_every_layer_replays_its_channels_last_calls_bit_for_bit(case, device, replays, monkeypatch):
    """The second call of a key is replayed (forward in inference, forward and backward in training), and
    returns exactly what the body returns for the same inputs, in the same layout."""
    module, (first, second) = _module_and_inputs(case, device, channels_last=True)
    with torch.no_grad():
        module(first)
        before = replays()
        replayed = module(second)
        assert replays() > before, "the inference call was not replayed"
    _step(module, first, 1)
    before = replays()
    replayed_step, replayed_stride = _step(module, second, 2)
    assert replays() >= before + 2, "the training forward and backward were not both replayed"

    monkeypatch.setattr(_replay, "_ENABLED", False)
    with torch.no_grad():
        body = module(second)
    body_step, body_stride = _step(module, second, 2)
    assert torch.equal(replayed, body) and replayed.stride() == body.stride()
    assert replayed_stride == body_stride
    for got, expected in zip(replayed_step, body_step, strict=True):
        assert got.stride() == expected.stride() and torch.equal(got, expected)


def _hetconv(device, in_channels=8):
    torch.manual_seed(0)
    layer = tritonconv.HetConv2d(in_channels, 8, 3, 1, 4, device=device, dtype=torch.float64)
    return layer.to(memory_format=torch.channels_last)


def _input(device, channels=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, channels, 5, 6, generator=generator, dtype=torch.float64).to(device)
    return x.contiguous(memory_format=torch.channels_last)


def test_a_forced_backend_is_part_of_the_key(device, replays, launches):
    layer = _hetconv(device)
    with torch.no_grad():
        layer(_input(device)), layer(_input(device, seed=1))
        assert replays() == 1
        count = launches()
        with tritonconv.use_backend("fallback"):
            fallback = layer(_input(device, seed=2))
            layer(_input(device, seed=2))
        assert launches() == count and replays() == 1  # the fallback: no launch, nothing replayed
        expected = torch.nn.functional.conv2d(_input(device, seed=2), layer.dense_weight(), None, 1, 1)
        torch.testing.assert_close(fallback, expected)
        layer(_input(device, seed=3))
        assert replays() == 2 and launches() == count + 1


def test_the_key_holds_the_settings_the_body_reads(monkeypatch):
    x = torch.zeros(2, 3)
    key = _replay._key((x, 1, [2, 3], None))
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", not torch.backends.cudnn.allow_tf32)
    assert _replay._key((x, 1, [2, 3], None)) != key
    monkeypatch.undo()
    assert _replay._key((x, 1, [2, 3], None)) == key
    assert _replay._key((x, True, [2, 3], None)) != key  # True is not 1: the operators' schemas differ
    assert _replay._key((x[:, 1:], 1, [2, 3], None)) != key  # another shape, 4 bytes off the alignment
    assert _replay._key((x.double(), 1, [2, 3], None)) != key
    with tritonconv.use_backend("triton"):
        assert _replay._key((x, 1, [2, 3], None)) != key
    monkeypatch.setattr(dispatch, "_tuning_override", "first-call")
    assert _replay._key((x, 1, [2, 3], None)) != key


def test_an_input_off_the_alignment_is_its_own_key(device, replays):
    layer = _hetconv(device)
    with torch.no_grad():
        layer(_input(device)), layer(_input(device, seed=1))
        wide = _input(device, channels=9, seed=2)
        sliced = wide[:, 1:]  # 8 bytes past a 16-byte boundary, 9-channel pixel strides
        got = layer(sliced)
        assert replays() == 1
        expected = torch.nn.functional.conv2d(sliced, layer.dense_weight(), None, 1, 1)
        torch.testing.assert_close(got, expected)


def test_a_body_that_runs_torch_operations_is_never_replayed(device, replays):
    """An NCHW input is copied to channels_last inside the body (a torch op): every call runs the body."""
    layer = _hetconv(device)
    with torch.no_grad():
        for seed in range(3):
            x = _input(device, seed=seed).contiguous()
            torch.testing.assert_close(layer(x), torch.nn.functional.conv2d(x, layer.dense_weight(), None, 1, 1))
    assert replays() == 0


def test_bad_input_raises_at_every_call(device):
    layer = _hetconv(device)
    for _ in range(2):
        with pytest.raises(ValueError, match="channels"):
            tritonconv.hetconv2d(_input(device, channels=12), layer.weight, layer.weight_pw, None, 1, 4)


def test_collecting_sees_every_call(device, replays):
    layer = _hetconv(device)
    with torch.no_grad():
        layer(_input(device)), layer(_input(device, seed=1))
        with dispatch.collecting() as calls:
            layer(_input(device, seed=2))
    assert replays() == 1 and len(calls) == 1


def test_records_keep_no_tensor(device):
    layer = _hetconv(device)
    x = _input(device)
    with torch.no_grad():
        y = layer(x)
        layer(_input(device, seed=1))
    alive = [weakref.ref(t) for t in (x, y)]
    del x, y
    gc.collect()
    assert all(ref() is None for ref in alive)


# ---- the recorder and the replay on stand-in kernels ------------------------------------------------------
def _body(kernel, *, view_offset=0, permuted=False):
    """An operator body: one buffer, one launch on x (or a channel view of it) and the buffer."""
    def body(x, scale: int):
        out = _layout.empty((3, 4), device=x.device, dtype=x.dtype)
        source = x[:, view_offset:] if view_offset else x
        _launcher.launch(kernel, (2,), (source, None, out), (scale, 6), {"BLOCK": 32, "num_warps": 4},
                         positions=(0, 1, 4))
        return out.t() if permuted else out
    return _replay.replaying(body)


@pytest.fixture
def direct_launches(monkeypatch):
    """Launches take the direct path (a CUDA device's) into the stand-in compiled kernel."""
    monkeypatch.setattr(_launcher, "_direct", lambda kernel, tensors: True)
    monkeypatch.setattr(_launcher, "driver", FakeDriver)
    monkeypatch.setattr(_replay, "driver", FakeDriver)
    _launcher.clear()
    yield
    _launcher.clear()


def test_the_replay_calls_the_compiled_kernel_with_the_tensors_addresses(direct_launches):
    kernel = FakeKernel()
    run = _body(kernel, view_offset=1, permuted=True)
    run(torch.zeros(4, 5), 5)  # recorded: through Triton (the stand-in's compile)
    assert len(kernel.launches) == 1 and not kernel.compiled.runs
    x = torch.ones(4, 5)
    out = run(x, 5)
    assert len(kernel.launches) == 1
    (launch,) = kernel.compiled.runs
    assert launch[:7] == (2, 1, 1, 7, "function", "metadata", None)
    # the view's address (one element in), the integers, the buffer's address, then constexprs/defaults
    assert launch[9:] == (x.data_ptr() + 4, None, 5, 6, out.data_ptr(), 32, False)
    assert out.shape == (4, 3) and out.stride() == (1, 4)  # the permuted view of the buffer, rebuilt
    run(x, 6)  # another integer: another key, recorded again
    assert len(kernel.launches) == 2


def test_the_replay_launches_on_the_stream_of_the_key_s_device(direct_launches, monkeypatch):
    """The stream is the current one of the CUDA device the key holds (an index), whatever the buffers'
    devices are."""
    asked = []

    class Driver(FakeDriver):
        class active(FakeDriver.active):
            @staticmethod
            def get_current_stream(device):
                asked.append(device)
                return 7

    monkeypatch.setattr(_replay, "driver", Driver)
    monkeypatch.setattr(_replay, "_settings", lambda cuda: ("settings", 3))  # the current device last
    kernel = FakeKernel()
    run = _body(kernel)
    run(torch.zeros(4, 5), 5)
    run(torch.ones(4, 5), 5)
    assert asked == [3] and len(kernel.compiled.runs) == 1


@pytest.mark.parametrize("hook", ["launch", "pre-run"])
def test_a_hook_set_after_the_record_takes_the_replay_through_the_launcher(hook, direct_launches, monkeypatch):
    """A launch hook (a profiler's) or a kernel's pre-run hook: the launcher's own call, which runs them."""
    from triton import knobs

    kernel = FakeKernel()
    monkeypatch.setattr(kernel, "pre_run_hooks", [], raising=False)
    run = _body(kernel)
    run(torch.zeros(4, 5), 5)
    if hook == "launch":
        monkeypatch.setattr(knobs.runtime, "launch_enter_hook", lambda metadata: None)
    else:
        kernel.pre_run_hooks.append(lambda *args, **kwargs: None)
    x = torch.ones(4, 5)
    run(x, 5)
    (launch,) = kernel.compiled.runs
    assert launch[9] is x  # the tensor itself, not its address


def test_the_plain_replay_relaunches_with_rebuilt_views():
    kernel = FakeKernel()
    run = _body(kernel, view_offset=2)
    run(torch.zeros(4, 5), 5)
    x = torch.arange(20.0).reshape(4, 5)
    out = run(x, 5)
    (grid, args, _) = kernel.launches[1]
    view, buffer = args[0], args[4]
    assert grid == (2,) and args[1:4] == (None, 5, 6)
    assert view.data_ptr() == x.data_ptr() + 8 and view.shape == (4, 3) and view.stride() == (5, 1)
    assert buffer is out


def test_nested_calls_inside_a_recording_run_their_bodies():
    kernel = FakeKernel()
    inner = _body(kernel)

    def outer_body(x, scale: int):
        return inner(x, scale)

    inner(torch.zeros(4, 5), 5)  # inner's record exists, but inside outer's recording it is not replayed
    outer = _replay.replaying(outer_body)
    outer(torch.zeros(4, 5), 5)
    assert len(kernel.launches) == 2
    outer(torch.zeros(4, 5), 5)  # outer's replay holds inner's launch
    assert len(kernel.launches) == 3


@pytest.mark.parametrize("make_view", [lambda x: x.view(torch.int32), lambda x: x.as_strided((4, 5), (5, 1), 0)],
                         ids=["reinterpreted", "before-its-source"])
def test_launched_tensors_that_are_no_plain_view_are_never_replayed(make_view):
    kernel = FakeKernel()

    def body(x, scale: int):
        out = _layout.empty((3, 4), device=x.device, dtype=x.dtype)
        _launcher.launch(kernel, (2,), (make_view(x), None, out), (scale, 6), {"BLOCK": 32}, positions=(0, 1, 4))
        return out

    run = _replay.replaying(body)
    storage = torch.zeros(30)
    for _ in range(2):
        run(storage[5:25].view(4, 5), 5)
    assert len(kernel.launches) == 2  # the body each time


def test_one_tensor_in_two_slots_is_its_own_key():
    """Recorded with one tensor as both arguments, a call with two tensors must not launch on the first."""
    kernel = FakeKernel()

    def body(x, w):
        out = _layout.empty((3, 4), device=x.device, dtype=x.dtype)
        _launcher.launch(kernel, (2,), (x, w, out), (5, 6), {"BLOCK": 32}, positions=(0, 1, 4))
        return out

    run = _replay.replaying(body)
    shared = torch.zeros(4)
    run(shared, shared), run(shared, shared)
    x, w = torch.zeros(4), torch.ones(4)
    run(x, w), run(x, w)
    launched = [(args[0], args[1]) for _, args, _ in kernel.launches]
    assert launched[2][0] is x and launched[2][1] is w and launched[3][0] is x and launched[3][1] is w


def test_one_bias_for_two_slots_through_a_layer_op(device):
    """dwsep_conv2d(x, dw, b, pw, b) then (x, dw, b1, pw, b2): each call computes with its own biases."""
    torch.manual_seed(0)
    layer = tritonconv.DepthwiseSeparableConv2d(8, 8, 3, bias=True, device=device, dtype=torch.float64)
    x = _input(device)
    dw, pw = layer.dw_weight, layer.pw_weight
    b1, b2 = torch.randn(8, dtype=torch.float64, device=device), torch.randn(8, dtype=torch.float64, device=device)
    with torch.no_grad():
        tritonconv.dwsep_conv2d(x, dw, b1, pw, b1)
        tritonconv.dwsep_conv2d(x, dw, b1, pw, b1)
        got = tritonconv.dwsep_conv2d(x, dw, b1, pw, b2)
        with tritonconv.use_backend("fallback"):
            expected = tritonconv.dwsep_conv2d(x, dw, b1, pw, b2)
    torch.testing.assert_close(got, expected)


def test_views_inside_one_flat_buffer_resolve_to_the_tensor_that_holds_them(replays):
    """Weight and bias as views of one flat buffer (FSDP's, apex's contiguous parameters): a launched view
    of the weight is the weight's, and the call is replayed."""
    kernel = FakeKernel()

    def body(w, b):
        out = _layout.empty((3, 4), device=w.device, dtype=w.dtype)
        _launcher.launch(kernel, (2,), (w.view(2, 3), b, out), (5, 6), {"BLOCK": 32}, positions=(0, 1, 4))
        return out

    run = _replay.replaying(body)
    flat = torch.arange(10.0)
    run(flat[:6], flat[6:])
    flat2 = torch.arange(10.0) + 100
    run(flat2[:6], flat2[6:])
    assert replays() == 1
    (_, args, _) = kernel.launches[1]
    assert args[0].data_ptr() == flat2.data_ptr() and args[0].shape == (2, 3)
    assert args[1].data_ptr() == flat2[6:].data_ptr()


def test_a_call_without_launches_replays_without_a_driver(device, replays):
    """A batch of 0 allocates its output and launches nothing: its replay needs no GPU driver."""
    layer = _hetconv(device)
    empty = _input(device)[:0]
    with torch.no_grad():
        for _ in range(3):
            assert layer(empty).shape == (0, 8, 5, 6)
    assert replays() == 2


def test_first_call_tuning_inside_a_recorded_call_is_neither_watched_nor_recorded(tmp_path, monkeypatch):
    """The tuner's measurement runs outside the recorder (its buffers are not kept alive, its torch ops not
    slowed by the dispatch mode), and the call it tuned keeps no record: the next call of the key is
    recorded."""
    from tritonconv.ops.hetconv import OPERATOR, HetConvSpec
    from tritonconv.tuning_cache import TuningCache

    seen = []

    def tune(operator, spec, pass_, device, cache):
        seen.append((_launcher.recorder(), torch._C._len_torch_dispatch_stack()))
        torch.zeros(3).add_(1)  # a torch op of the measurement: not the recorded call's
        return None  # no winner: the call runs untuned

    monkeypatch.setattr(dispatch, "_tune_first_call", tune)
    dispatch.set_tuning("first-call")
    dispatch._first_call_tried.clear()
    spec, cache = HetConvSpec(2, 8, 8, 6, 5, 3, 1, 2, True, "float32"), TuningCache(tmp_path / "t.json")
    kernel = FakeKernel()

    def body(x):
        dispatch.decide(OPERATOR, spec, "forward", torch.device("cuda"), cache=cache)
        out = _layout.empty((3, 4), device=x.device, dtype=x.dtype)
        _launcher.launch(kernel, (2,), (x, None, out), (5, 6), {"BLOCK": 32}, positions=(0, 1, 4))
        return out

    run = _replay.replaying(body)
    try:
        run(torch.zeros(4))
        assert seen == [(None, 0)]
        records = [records for records in _replay._records if records]
        assert records == []  # the tuned call is not kept, not even as a refusal
        run(torch.zeros(4))  # tried once: the decision is stable now, and this call is recorded
        assert sum(len(records) for records in _replay._records) == 1
        run(torch.zeros(4))
        assert len(kernel.launches) == 3 and len(seen) == 1
    finally:
        dispatch.set_tuning(None)
        dispatch._first_call_tried.clear()


@pytest.mark.gpu
def test_on_a_gpu_the_replay_launches_directly_and_matches_the_body(monkeypatch, replays):
    """Every dispatched layer: the second call's record launches its compiled kernels itself, and the
    replayed forward and backward equal the body's."""
    for case in DISPATCHED:
        torch.manual_seed(0)
        module = case.build(device="cuda", dtype=torch.bfloat16).to(memory_format=torch.channels_last)
        if case.has_batch_norm:
            module.eval()
        x = torch.randn(case.input_shape, device="cuda", dtype=torch.bfloat16)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            module(x)
            before = replays()
            replayed = module(x)
        assert replays() > before, case.name
        records = [r for records in _replay._records for r in records.values() if isinstance(r, _replay.Replay)]
        assert records and all(r.direct for r in records), case.name
        with monkeypatch.context() as off:
            off.setattr(_replay, "_ENABLED", False)
            with torch.no_grad():
                body = module(x)
        assert torch.equal(replayed, body), case.name
        _replay.clear()
