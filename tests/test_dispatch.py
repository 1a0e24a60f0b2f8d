"""Which backend each call takes, and why."""

import json
import os

import pytest
import torch

import tritonconv
from tritonconv import dispatch
from tritonconv.dispatch import BackendUnavailable, Operator
from tritonconv.ops.hetconv import OPERATOR, HetConvSpec
from tritonconv.tuning_cache import TuningCache

from conftest import RUNNING_AS_ROOT

CUDA = torch.device("cuda")  # decide() only reads the device's type and name: no GPU is touched
SPEC = HetConvSpec(8, 16, 16, 10, 10, 3, 1, 4, False, "bfloat16")
CPU_SPEC = HetConvSpec(8, 16, 16, 10, 10, 3, 1, 4, False, "float32")  # the interpreter's bf16 is wrong


def test_cpu_under_the_interpreter_runs_triton():
    decision = dispatch.decide(OPERATOR, CPU_SPEC, "forward", torch.device("cpu"))
    assert decision.backend == "triton" and "TRITON_INTERPRET" in decision.reason
    assert set(decision.tiles) == {"forward"}
    backward = dispatch.decide(OPERATOR, CPU_SPEC, "backward", torch.device("cpu"))
    assert set(backward.tiles) == {"backward_input", "backward_weight"}


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


def test_environment_is_read_on_every_call_as_os_environ_answers(monkeypatch):
    """env's fast reader (os.environ's encoded mapping) sees every write, delete and odd value."""
    from tritonconv import env

    for value in ("fallback", " Triton ", "", "caf\u00e9"):
        monkeypatch.setenv("TRITONCONV_BACKEND", value)
        assert env._get("TRITONCONV_BACKEND", "auto") == os.environ.get("TRITONCONV_BACKEND")
    monkeypatch.setenv("TRITONCONV_BACKEND", " Triton ")
    assert env.backend_override() == "triton"
    monkeypatch.delenv("TRITONCONV_BACKEND")
    assert env._get("TRITONCONV_BACKEND", None) is None and env.backend_override() == "auto"
    monkeypatch.setenv("TRITONCONV_CACHE_DIR", "/tmp/somewhere")
    assert str(env.cache_dir()) == "/tmp/somewhere"
    monkeypatch.setattr(os, "environ", {"TRITONCONV_BACKEND": "fallback"})  # another mapping: read as it is
    assert env.backend_override() == "fallback"
    monkeypatch.undo()
    monkeypatch.setenv("TRITONCONV_BACKEND", "cudnn")
    for _ in range(2):  # an invalid value raises every time (it is not memoized)
        with pytest.raises(ValueError, match="TRITONCONV_BACKEND='cudnn'"):
            env.backend_override()


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
        "winner": winner, "tiles": tiles or {},
        "timings_ms": {"triton": 1.0, "fallback": 2.0 if winner == "triton" else 0.5},
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


def test_a_pass_that_failed_at_its_tuned_tiles_says_so(tmp_path):
    cache = TuningCache(tmp_path / "tuning.json")
    cache.store(OPERATOR.cache_key(SPEC, "backward", CUDA), {
        "winner": "fallback", "tiles": {}, "timings_ms": {"triton": None, "fallback": 0.5},
        "failed": {dispatch.pass_failure_key("backward"): "wrong result"}, "device": "test-gpu"})
    decision = dispatch.decide(OPERATOR, SPEC, "backward", CUDA, cache=cache)
    assert decision.backend == "fallback" and "the pass failed at its tuned tiles" in decision.reason


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
        return Operator("hetconv", (source,), OPERATOR.kernels_of_pass, OPERATOR.default_tile,
                        OPERATOR.candidate_tiles)

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


# ---- a tuning cache that is unreadable or malformed: every CUDA call still gets a decision --------------
TILE = {"block_rows": 64, "block_cols": 32, "block_reduce": 32, "num_warps": 4, "num_stages": 2, "splits": 0}
GOOD_ENTRY = {"winner": "triton", "tiles": {"forward": TILE}, "device": "test-gpu",  # as the tuner writes it
              "timings_ms": {"triton": 1.0, "fallback": 2.0, "candidates": {"forward:64x32x32_w4_st2": 1.0}}}


def with_tile(**fields):
    return {**GOOD_ENTRY, "tiles": {"forward": {**TILE, **fields}}}


def with_timings(**timings):
    return {**GOOD_ENTRY, "timings_ms": {**GOOD_ENTRY["timings_ms"], **timings}}


def without(name):
    return {k: v for k, v in GOOD_ENTRY.items() if k != name}


BAD_ENTRIES = {  # name: (the entry stored for SPEC's forward pass, what the warning and the reason say)
    "not a table": (["fallback"], "list ['fallback'], not a table"),
    "a bare string": ("fallback", "str 'fallback', not a table"),
    "no winner": (without("winner"), "no 'winner'"),
    "unknown winner": ({**GOOD_ENTRY, "winner": "cudnn"}, "winner 'cudnn' is not one of"),
    "winner fallback misspelt": ({**GOOD_ENTRY, "winner": "Fallback"}, "winner 'Fallback' is not one of"),
    "null winner": ({**GOOD_ENTRY, "winner": None}, "winner None is not one of"),
    "tiles not a table": ({**GOOD_ENTRY, "tiles": [TILE]}, "'tiles' is list"),
    "tile of another pass": ({**GOOD_ENTRY, "tiles": {"backward_input": TILE}},
                             "tile for 'backward_input', which is not a kernel of this pass"),
    "tile of no kernel": ({**GOOD_ENTRY, "tiles": {"fwd": TILE}}, "tile for 'fwd', which is not a kernel"),
    "tile not a table": ({**GOOD_ENTRY, "tiles": {"forward": "64x32x32"}}, "tile '64x32x32' is not a table"),
    "unknown tile field": (with_tile(block_k=32), "unknown tile fields ['block_k']"),
    "tile without block_rows": ({**GOOD_ENTRY, "tiles": {"forward": {"block_cols": 32, "block_reduce": 32}}},
                                "tile lacks ['block_rows']"),
    "block as a string": (with_tile(block_rows="64"), "block_rows='64' is not an int"),
    "block as a float": (with_tile(block_cols=32.0), "block_cols=32.0 is not an int"),
    "block as a bool": (with_tile(block_reduce=True), "block_reduce=True is not an int"),
    "zero block": (with_tile(block_rows=0), "block_rows=0 is not a power of two >= 16"),
    "negative block": (with_tile(block_cols=-32), "block_cols=-32 is not a power of two >= 16"),
    "block not a power of two": (with_tile(block_reduce=48), "block_reduce=48 is not a power of two"),
    "block under the dot minimum": (with_tile(block_rows=8), "block_rows=8 is not a power of two >= 16"),
    "blocks over Triton's tensor limit": (with_tile(block_rows=4096, block_cols=512), "exceed Triton's"),
    "num_warps not a power of two": (with_tile(num_warps=3), "num_warps=3 is not one of"),
    "num_warps too many": (with_tile(num_warps=32), "num_warps=32 is not one of"),
    "num_stages zero": (with_tile(num_stages=0), "num_stages=0 is not >= 1"),
    "splits negative": (with_tile(splits=-1), "splits=-1 is not >= 0"),
    "timings not a table": ({**GOOD_ENTRY, "timings_ms": [1.0, 0.5]}, "'timings_ms' is list"),
    "timing not a number": (with_timings(triton="fast"), "timing 'triton' is 'fast'"),
    "timing negative": (with_timings(fallback=-2.0), "timing 'fallback' is -2.0"),
    "timing NaN": (with_timings(triton=float("nan")), "timing 'triton' is nan"),
    "timing infinite": (with_timings(fallback=float("inf")), "timing 'fallback' is inf"),
    "candidates not a table": (with_timings(candidates=[1.0]), "'timings_ms.candidates' is list"),
    "candidate timing NaN": (with_timings(candidates={"forward:x": float("nan")}), "timing 'forward:x' is nan"),
    "failed not a table": ({**GOOD_ENTRY, "failed": "all of them"}, "'failed' is str"),
}


def write_cache(path, entries):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"format": 1, "entries": entries}))  # NaN and Infinity as Python writes them


def decide_a_few_times(cache):
    """The calls a training step makes: forward twice, once more under a forced backend (a new memo key)."""
    decisions = [dispatch.decide(OPERATOR, SPEC, "forward", CUDA, cache=cache) for _ in range(2)]
    decisions.append(dispatch.decide(OPERATOR, SPEC, "forward", CUDA, cache=cache, forced="triton"))
    return decisions


def runtime_warnings(recorded):
    return [str(w.message) for w in recorded if issubclass(w.category, RuntimeWarning)]


def test_a_well_formed_entry_is_used_without_warning(tmp_path, every_warning):
    path = tmp_path / "cache" / "tuning.json"
    write_cache(path, {str(OPERATOR.cache_key(SPEC, "forward", CUDA)): GOOD_ENTRY})
    decision = dispatch.decide(OPERATOR, SPEC, "forward", CUDA, cache=TuningCache())
    assert decision.backend == "triton" and decision.tiles["forward"].to_dict() == TILE
    assert "measured triton 1 ms vs fallback 2 ms" in decision.reason
    assert runtime_warnings(every_warning) == []


@pytest.mark.parametrize("name", BAD_ENTRIES)
def test_a_malformed_entry_is_ignored_with_one_warning(tmp_path, every_warning, name):
    entry, problem = BAD_ENTRIES[name]
    path = tmp_path / "cache" / "tuning.json"
    key = str(OPERATOR.cache_key(SPEC, "forward", CUDA))
    write_cache(path, {key: entry})
    decisions = decide_a_few_times(TuningCache())
    defaults = {"forward": OPERATOR.default_tile(SPEC, "forward")}
    for decision in decisions:
        assert decision.backend == "triton" and decision.tiles == defaults  # as if nothing were tuned: no bad tile
        assert "cached entry was rejected" in decision.reason and problem in decision.reason
    [warning] = runtime_warnings(every_warning)
    assert str(path) in warning and key in warning and problem in warning


def test_a_malformed_entry_warns_again_only_when_the_file_changes(tmp_path, every_warning):
    path = tmp_path / "cache" / "tuning.json"
    cache = TuningCache()
    write_cache(path, {str(OPERATOR.cache_key(SPEC, "forward", CUDA)): with_tile(num_warps=3)})
    decide_a_few_times(cache)
    store(cache, SPEC, "backward", "fallback")  # the tuner writes another entry: a new version of the file
    decide_a_few_times(cache)
    assert dispatch.decide(OPERATOR, SPEC, "backward", CUDA, cache=cache).backend == "fallback"
    assert len(runtime_warnings(every_warning)) == 2


def test_explain_says_the_cached_entry_was_rejected(tmp_path, monkeypatch):
    layer = tritonconv.HetConv2d(8, 8, 3, 1, 2)
    x = torch.randn(1, 8, 5, 5)
    spec = HetConvSpec.from_tensors(x, layer.weight, layer.weight_pw, layer.bias, stride=1, p=2)
    write_cache(tmp_path / "cache" / "tuning.json",
                {str(OPERATOR.cache_key(spec, "forward", CUDA)): with_tile(block_rows=24)})
    monkeypatch.setattr(torch.Tensor, "device", property(lambda self: CUDA))  # explain() reads only x.device
    with pytest.warns(RuntimeWarning, match="block_rows=24"):
        decision = tritonconv.explain(layer, x)
    assert decision.backend == "triton" and decision.tiles["forward"] == OPERATOR.default_tile(spec, "forward")
    assert "cached entry was rejected: tile for 'forward': block_rows=24 is not a power of two >= 16" in decision.reason


def unreadable_states():
    """name: (set-up(cache folder, deny_access) -> the path the warning names, what it and the reason say)."""
    def write(folder, content):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "tuning.json").write_bytes(content)
        return folder / "tuning.json"

    def a_folder(folder, deny):
        (folder / "tuning.json").mkdir(parents=True)
        return folder / "tuning.json"

    def a_file_as_cache_dir(folder, deny):
        folder.parent.mkdir(parents=True, exist_ok=True)
        folder.write_text("not a folder")
        return folder / "tuning.json"

    def unsearchable(folder, deny):
        path = write(folder, json.dumps({"format": 1, "entries": {}}).encode())
        deny(folder)
        return path

    return {
        "not UTF-8": (lambda folder, deny: write(folder, b'{"format": 1, "entries": {"\xff\xfe": 1}}'),
                      "is not UTF-8 text"),
        "not JSON": (lambda folder, deny: write(folder, b"{not json"), "is not valid JSON"),
        "entries not a table": (lambda folder, deny: write(folder, b'{"format": 1, "entries": [1, 2]}'),
                                "does not hold an 'entries' table"),
        "foreign format": (lambda folder, deny: write(folder, b'{"format": 999, "entries": {}}'), "has format 999"),
        "a folder named tuning.json": (a_folder, "cannot be read (Is a directory"),
        "TRITONCONV_CACHE_DIR is a file": (a_file_as_cache_dir,
                                           "cannot be read (Not a directory: a file, not a folder"),
        "cache folder not searchable (simulated chmod 000)": (unsearchable, "cannot be read (Permission denied"),
    }


UNREADABLE = unreadable_states()


@pytest.mark.parametrize("name", UNREADABLE)
def test_an_unreadable_cache_is_ignored_with_one_warning(tmp_path, every_warning, deny_access, name):
    set_up, problem = UNREADABLE[name]
    path = set_up(tmp_path / "cache", deny_access)
    cache = TuningCache()
    decisions = decide_a_few_times(cache) + [dispatch.decide(OPERATOR, SPEC, "backward", CUDA, cache=cache)]
    for decision in decisions:
        assert decision.backend == "triton" and problem in decision.reason and str(path) in decision.reason
    assert decisions[0].tiles == {"forward": OPERATOR.default_tile(SPEC, "forward")}
    [warning] = runtime_warnings(every_warning)
    assert str(path) in warning and problem in warning


@pytest.mark.skipif(RUNNING_AS_ROOT, reason="root ignores permission bits; the simulated chmod 000 case covers it")
def test_a_cache_folder_chmod_000_is_ignored_with_one_warning(tmp_path, every_warning):
    folder = tmp_path / "cache"
    write_cache(folder / "tuning.json", {str(OPERATOR.cache_key(SPEC, "forward", CUDA)): GOOD_ENTRY})
    folder.chmod(0)
    try:
        decisions = decide_a_few_times(TuningCache())
    finally:
        folder.chmod(0o755)
    assert all(d.backend == "triton" and "Permission denied" in d.reason for d in decisions)
    assert len(runtime_warnings(every_warning)) == 1


def test_spec_is_memoized_on_what_it_reads_of_the_tensors():
    x, weight, weight_pw = torch.randn(2, 8, 5, 5), torch.randn(8, 2, 3, 3), torch.randn(8, 6)
    spec = HetConvSpec.from_tensors(x, weight, weight_pw, None, stride=1, p=4)
    assert HetConvSpec.from_tensors(x.clone(), weight, weight_pw, None, stride=1, p=4) is spec
    nhwc = HetConvSpec.from_tensors(x.contiguous(memory_format=torch.channels_last), weight, weight_pw, None,
                                    stride=1, p=4)
    assert nhwc.channels_last and not spec.channels_last
    assert HetConvSpec.from_tensors(x, weight, weight_pw, None, stride=2, p=4).stride == 2
    for _ in range(2):  # a call that raises is not remembered
        with pytest.raises(TypeError, match="dtype"):
            HetConvSpec.from_tensors(x.double(), weight, weight_pw, None, stride=1, p=4)


def test_tuning_keys_are_generated_from_the_declared_fields():
    from dataclasses import fields

    from tritonconv.ops.registry import ADAPTERS
    from tritonconv.ops.shuffle.spec import ShuffleConvSpec

    for name, adapter in ADAPTERS.items():
        spec = adapter.specs_for(adapter.shape_sets[0], batch=100, dtype="bfloat16")[0][2]
        key = spec.tuning_key()
        assert key.startswith("batch=128,"), f"{name}: the batch is keyed on its bucket: {key}"
        assert [part.split("=")[0] for part in key.split(",")] == [
            f.name for f in fields(spec) if f.name not in spec.NOT_TUNED], name
    # the shuffle's grouping changes the stores, so it is part of the key (the hand-written key left it out)
    keys = {ShuffleConvSpec(2, 6, 12, 4, 4, groups=3, shuffle_groups=g).tuning_key() for g in (1, 3)}
    assert len(keys) == 2


def test_every_adapter_calls_its_layer_public_op():
    """``layer_call`` (what ``perf host`` times) is the layer's functional op on the workload: its output
    equals the adapter's fallback forward, and it differentiates ``call_inputs``."""
    from tritonconv.adapter import relative_error
    from tritonconv.ops.registry import ADAPTERS

    for name, adapter in ADAPTERS.items():
        spec = adapter.shrink(adapter.specs_for(adapter.shape_sets[0], batch=2, dtype="float64")[0][2])
        work = adapter.make_workload(spec, torch.device("cpu"))
        inputs = [work.tensors[n].requires_grad_() for n in adapter.call_inputs if work.tensors.get(n) is not None]
        with tritonconv.use_backend("fallback"):
            y = adapter.layer_call(work.tensors, spec)
        expected = adapter.fallback("forward", work)()[0]
        assert y.shape == expected.shape and relative_error(y.detach(), expected.detach()) < 1e-12, name
        grads = torch.autograd.grad(y, inputs, torch.ones_like(y))
        assert all(g is not None and g.shape == t.shape for g, t in zip(grads, inputs)), name


def test_the_layers_triton_path_is_its_adapter_passes():
    """The torch operators run the adapter's ``forward`` and ``backward`` (what the tuner and the perf suite
    drive): a layer call forced to Triton gives bit for bit what the adapter's passes give at the tiles the
    dispatcher picks."""
    from tritonconv.ops.registry import ADAPTERS

    for name, adapter in ADAPTERS.items():
        spec = adapter.shrink(adapter.specs_for(adapter.shape_sets[0], batch=2, dtype="float64")[0][2])
        work = adapter.make_workload(spec, torch.device("cpu"))
        t = work.tensors
        inputs = [t[n].requires_grad_() for n in adapter.call_inputs if t.get(n) is not None]
        with tritonconv.use_backend("triton"):
            y = adapter.layer_call(t, spec)
            grads = torch.autograd.grad(y, inputs, work.grad)
        tiles = {**dispatch.decide(adapter.operator, spec, "forward", torch.device("cpu"), forced="triton").tiles,
                 **dispatch.decide(adapter.operator, spec, "backward", torch.device("cpu"), forced="triton").tiles}
        with torch.no_grad():
            passes = {**t, "out": adapter.forward(spec, t, tiles["forward"])}
            expected = [g for g in adapter.backward(spec, passes, work.grad, tiles, True, True) if g is not None]
        assert torch.equal(y.detach(), passes["out"]), name
        assert len(grads) == len(expected) and all(torch.equal(a, b) for a, b in zip(grads, expected)), name


def test_hyperparameters_the_schema_converts_work_eagerly_as_compiled():
    """A numpy integer (a config's value) reaches the operator, whose schema converts it, as under
    torch.compile and fake tensors; the eager fast path takes only plain Python values."""
    import numpy as np

    from tritonconv.ops.depthwise.op import depthwise_conv2d

    x, weight = torch.randn(2, 4, 7, 7), torch.randn(4, 1, 3, 3)
    with tritonconv.use_backend("fallback"):
        expected = depthwise_conv2d(x, weight, None, 2, 1)
        for stride, padding in ((np.int64(2), 1), (2, np.int32(1))):
            with torch.no_grad():
                assert torch.equal(depthwise_conv2d(x, weight, None, stride, padding), expected)
            assert torch.equal(depthwise_conv2d(x, weight.requires_grad_(), None, stride, padding), expected)
