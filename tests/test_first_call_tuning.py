"""Opt-in first-call tuning: an untuned CUDA call is measured before it runs, never while torch.compile
traces or a CUDA graph is captured, and explain() says what it would do (decide() only reads the
device's type and name: no GPU is touched; the measurement runs on the CPU with a stand-in clock)."""

import inspect

import pytest
import torch

import tritonconv
from tritonconv import dispatch, tuner
from tritonconv.ops.hetconv import OPERATOR, HetConvSpec
from tritonconv.ops.hetconv.adapter import ADAPTER
from tritonconv.tuning_cache import TuningCache

SPEC = HetConvSpec(2, 8, 8, 6, 5, 3, 1, 2, True, "float32")
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def fresh_tuning_state():
    dispatch.set_tuning(None)
    dispatch._first_call_tried.clear()
    yield
    dispatch.set_tuning(None)
    dispatch._first_call_tried.clear()


@pytest.fixture
def measured(monkeypatch):
    """The first-call measurement, on the CPU with every run 1 ms; the list of what it tuned."""
    tuned = []

    def tune_on_cpu(operator, spec, pass_, device, cache):
        tuned.append((operator.name, spec, pass_))
        return tuner.tune_pass(ADAPTER, spec, pass_, torch.device("cpu"), cache, max_tiles=1,
                               timer=lambda fn: 1.0).entry
    monkeypatch.setattr(dispatch, "_tune_first_call", tune_on_cpu)
    return tuned


def test_off_by_default(tmp_path, measured):
    decision = dispatch.decide(OPERATOR, SPEC, "forward", CUDA, cache=TuningCache(tmp_path / "t.json"))
    assert "not tuned" in decision.reason and decision.untuned and measured == []


@pytest.mark.parametrize("switch", ["code", "environment"])
def test_first_call_tunes_once_and_then_reads_the_cache(tmp_path, measured, monkeypatch, switch):
    if switch == "code":
        tritonconv.set_tuning("first-call")
    else:
        monkeypatch.setenv("TRITONCONV_TUNING", "first-call")
    cache = TuningCache(tmp_path / "t.json")
    first = dispatch.decide(OPERATOR, SPEC, "forward", CUDA, cache=cache)
    assert "measured" in first.reason and "tuned at its first call" in first.reason and not first.untuned
    second = dispatch.decide(OPERATOR, SPEC, "forward", CUDA, cache=cache)
    assert "measured" in second.reason and second.backend == first.backend
    assert measured == [("hetconv", SPEC, "forward")]


def test_bad_modes_are_refused(monkeypatch):
    with pytest.raises(ValueError, match="tuning mode 'always'"):
        tritonconv.set_tuning("always")
    monkeypatch.setenv("TRITONCONV_TUNING", "sometimes")
    with pytest.raises(ValueError, match="TRITONCONV_TUNING='sometimes'"):
        dispatch.decide(OPERATOR, SPEC, "forward", CUDA)


def test_never_while_compiling_or_capturing_and_explain_says_so(tmp_path, measured, monkeypatch):
    tritonconv.set_tuning("first-call")
    cache = TuningCache(tmp_path / "t.json")
    with monkeypatch.context() as patch:
        patch.setattr(torch.compiler, "is_compiling", lambda: True)
        decision = dispatch.decide(OPERATOR, SPEC, "forward", CUDA, cache=cache)
    assert "not done while torch.compile traces" in decision.reason
    with monkeypatch.context() as patch:
        patch.setattr(torch.cuda, "is_available", lambda: True)
        patch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
        decision = dispatch.decide(OPERATOR, SPEC, "forward", CUDA, cache=cache)
    assert "not done during CUDA graph capture" in decision.reason
    with dispatch.explaining():
        decision = dispatch.decide(OPERATOR, SPEC, "forward", CUDA, cache=cache)
    assert "will measure it when it first runs" in decision.reason
    with tritonconv.use_backend("triton"):
        assert "forced" in dispatch.decide(OPERATOR, SPEC, "forward", CUDA, cache=cache).reason
    assert measured == []

    class Layer:
        def explain(self, x, pass_):
            return dispatch._explaining.get()
    assert tritonconv.explain(Layer(), None) is True  # tritonconv.explain never tunes


def test_a_failed_first_call_measurement_warns_and_runs_untuned(tmp_path, monkeypatch, every_warning):
    tritonconv.set_tuning("first-call")
    calls = []

    def broken(*args):
        calls.append(args)
        raise RuntimeError("out of memory")
    monkeypatch.setattr(dispatch, "_tune_first_call", broken)
    cache = TuningCache(tmp_path / "t.json")
    decision = dispatch.decide(OPERATOR, SPEC, "backward", CUDA, cache=cache)
    assert decision.backend == "triton" and "first-call tuning failed: out of memory" in decision.reason
    assert "not tuned" in dispatch.decide(OPERATOR, SPEC, "backward", CUDA, cache=cache).reason
    assert len(calls) == 1  # tried once per process
    assert any("first-call tuning of hetconv backward" in str(w.message) for w in every_warning)


def test_every_explain_path_tunes_nothing(tmp_path, measured):
    """Layers' own explain() methods reach dispatch.explain, which never measures (not only
    tritonconv.explain): with first-call tuning on, asking is not tuning."""
    tritonconv.set_tuning("first-call")
    decision = dispatch.explain(OPERATOR, SPEC, "forward", CUDA)
    assert measured == [] and "first-call tuning" in decision.reason
    from tritonconv.ops import depthwise, dwsep, hetconv, shift, shuffle, versatile
    for module in (depthwise.op, dwsep.op, hetconv.op, shift.op, shuffle.op, versatile.op):
        source = inspect.getsource(module.explain)
        assert "dispatch.explain(" in source and "dispatch.decide(" not in source, module.__name__
