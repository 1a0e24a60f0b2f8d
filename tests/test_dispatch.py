"""Which backend each call takes, and why."""

import pytest
import torch

import tritonconv
from tritonconv import dispatch
from tritonconv.dispatch import BackendUnavailable, Operator
from tritonconv.ops.hetconv import OPERATOR, HetConvSpec
from tritonconv.tuning_cache import TuningCache

CUDA = torch.device("cuda")  # decide() only reads the device's type and name: no GPU is touched
SPEC = HetConvSpec(8, 16, 16, 10, 10, 3, 1, 4, False, "bfloat16")
CPU_SPEC = HetConvSpec(8, 16, 16, 10, 10, 3, 1, 4, False, "float32")  # the interpreter's bf16 is wrong


def test_cpu_under_the_interpreter_runs_triton():
    decision = dispatch.decide(OPERATOR, CPU_SPEC, "forward", torch.device("cpu"))
    assert decision.backend == "triton" and "TRITON_INTERPRET" in decision.reason
    assert set(decision.tiles) == {"forward"}
    assert set(dispatch.decide(OPERATOR, CPU_SPEC, "backward", torch.device("cpu")).tiles) == {"backward_input", "backward_weight"}


def test_cpu_bfloat16_goes_to_torch_and_cannot_be_forced_to_the_interpreter():
    decision = dispatch.decide(OPERATOR, SPEC, "forward", torch.device("cpu"))
    assert decision.backend == "fallback" and "bfloat16" in decision.reason
    with pytest.raises(BackendUnavailable, match="interpreter computes bfloat16 wrongly"):
        with tritonconv.use_backend("triton"):
            dispatch.decide(OPERATOR, SPEC, "forward", torch.device("cpu"))


def test_cpu_without_the_interpreter_falls_back(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    decision = dispatch.decide(OPERATOR, CPU_SPEC, "forward", torch.device("cpu"))
    assert decision.backend == "fallback" and "TRITON_INTERPRET=1" in decision.reason
    with pytest.raises(BackendUnavailable, match="'triton' was forced for hetconv .* cannot run here"):
        with tritonconv.use_backend("triton"):
            dispatch.decide(OPERATOR, CPU_SPEC, "forward", torch.device("cpu"))


def test_environment_and_context_manager_force_a_backend(monkeypatch):
    monkeypatch.setenv("TRITONCONV_BACKEND", "fallback")
    assert dispatch.decide(OPERATOR, CPU_SPEC, "forward", torch.device("cpu")).backend == "fallback"
    with tritonconv.use_backend("triton"):  # code wins over the environment
        assert dispatch.decide(OPERATOR, CPU_SPEC, "forward", torch.device("cpu")).backend == "triton"
    monkeypatch.setenv("TRITONCONV_BACKEND", "cudnn")
    with pytest.raises(ValueError, match="TRITONCONV_BACKEND='cudnn' is not a backend"):
        dispatch.decide(OPERATOR, CPU_SPEC, "forward", torch.device("cpu"))
    with pytest.raises(ValueError, match="backend='fast'"):
        with tritonconv.use_backend("fast"):
            pass


def test_forced_backend_reaches_the_backward(monkeypatch):
    """use_backend around the forward decides the backward too, wherever autograd runs it."""
    calls = []
    real = dispatch.decide
    monkeypatch.setattr(dispatch, "decide", lambda *a, **k: calls.append((a[2], k.get("forced"))) or real(*a, **k))
    layer = tritonconv.HetConv2d(4, 4, 3, 1, 2)
    x = torch.randn(1, 4, 4, 4, requires_grad=True)
    with tritonconv.use_backend("fallback"):
        y = layer(x)
    y.sum().backward()
    assert ("backward", "fallback") in calls


def store(cache, spec, pass_, winner, tiles=None, operator=OPERATOR):
    cache.store(operator.cache_key(spec, pass_, CUDA), {
        "winner": winner, "tiles": tiles or {}, "timings_ms": {"triton": 1.0, "fallback": 2.0 if winner == "triton" else 0.5},
        "device": "test-gpu"})


def test_measured_winner_is_used_on_cuda(tmp_path):
    cache = TuningCache(tmp_path / "tuning.json")
    untuned = dispatch.decide(OPERATOR, SPEC, "forward", CUDA, cache=cache)
    assert untuned.backend == "triton" and "not tuned" in untuned.reason

    store(cache, SPEC, "forward", "fallback")
    decision = dispatch.decide(OPERATOR, SPEC, "forward", CUDA, cache=cache)
    assert decision.backend == "fallback" and "measured triton 1 ms vs fallback 0.5 ms" in decision.reason

    tile = {"block_rows": 64, "block_cols": 32, "block_reduce": 32, "num_warps": 4, "num_stages": 2, "splits": 0}
    store(cache, SPEC, "forward", "triton", {"forward": tile})
    decision = dispatch.decide(OPERATOR, SPEC, "forward", CUDA, cache=cache)
    assert decision.backend == "triton" and decision.tiles["forward"].to_dict() == tile
    assert "64x32x32_w4_st2" in str(decision)


def test_batch_sizes_share_a_bucket_and_other_shapes_do_not(tmp_path):
    cache = TuningCache(tmp_path / "tuning.json")
    store(cache, SPEC, "forward", "fallback")
    same_bucket = HetConvSpec(7, 16, 16, 10, 10, 3, 1, 4, False, "bfloat16")
    other_bucket = HetConvSpec(9, 16, 16, 10, 10, 3, 1, 4, False, "bfloat16")
    other_layout = HetConvSpec(8, 16, 16, 10, 10, 3, 1, 4, False, "bfloat16", channels_last=True)
    assert dispatch.decide(OPERATOR, same_bucket, "forward", CUDA, cache=cache).backend == "fallback"
    for spec in (other_bucket, other_layout):
        assert "not tuned" in dispatch.decide(OPERATOR, spec, "forward", CUDA, cache=cache).reason


def test_editing_the_kernel_source_invalidates_measurements(tmp_path):
    cache = TuningCache(tmp_path / "tuning.json")
    source = tmp_path / "kernels.py"

    def operator_of_a_new_process():
        return Operator("hetconv", (source,), OPERATOR.kernels_of_pass, OPERATOR.default_tile)

    source.write_text("# version 1\n")
    store(cache, SPEC, "forward", "fallback", operator=operator_of_a_new_process())
    assert dispatch.decide(operator_of_a_new_process(), SPEC, "forward", CUDA, cache=cache).backend == "fallback"
    source.write_text("# version 2\n")
    assert "not tuned" in dispatch.decide(operator_of_a_new_process(), SPEC, "forward", CUDA, cache=cache).reason


def test_explain_says_which_backend_and_why():
    layer = tritonconv.HetConv2d(8, 8, 3, 1, 2)
    x = torch.randn(1, 8, 5, 5)
    decision = tritonconv.explain(layer, x)
    assert decision.backend == "triton" and str(decision).startswith("triton [forward=")
    with tritonconv.use_backend("fallback"):
        assert str(tritonconv.explain(layer, x, "backward")).startswith("fallback: forced")
