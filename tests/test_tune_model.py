"""tritonconv.tune(model, inputs): every tritonconv call of a model collected at the dispatch point and
tuned once (GPU timing replaced by a stand-in clock; without one, candidates checked under the interpreter)."""

import sys

import pytest
import torch
from torch import nn

import tritonconv
from autotune.cli import main
from tritonconv import dispatch, tuner
from tritonconv.tuning_cache import TuningCache


def small_model():
    """A converted model (two nn.Conv2d turned HetConv2d, one of them twice the same shape) with a
    depthwise layer inside a nested block and batch norm."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Sequential(tritonconv.DepthwiseConv2d(16, 3), nn.ReLU()),
                          nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1))
    tritonconv.convert(model, tritonconv.HetConv2d, p=4)
    return model


def unit_clock(fn):
    fn()
    return 1.0


def test_collecting_sees_every_layer_with_its_module_path():
    model, x = small_model(), torch.randn(2, 8, 6, 6)
    calls = tuner.collect_calls(model, x)
    paths = {(call.operator.name, call.pass_, call.where) for call in calls}
    assert {("hetconv", "forward", "0"), ("hetconv", "backward", "0"), ("depthwise", "forward", "3.0"),
            ("depthwise", "backward", "3.0"), ("hetconv", "forward", "5")} <= paths
    assert not dispatch._collectors  # the collector is gone after the block


def test_collecting_leaves_the_model_as_it_was():
    model, x = small_model(), torch.randn(2, 8, 6, 6)
    running_mean = model[1].running_mean.clone()
    tuner.collect_calls(model, x)
    assert torch.equal(model[1].running_mean, running_mean)
    assert all(param.grad is None for param in model.parameters())
    assert tuner.collect_calls(model, x, passes=("forward",)) and all(
        call.pass_ == "forward" for call in tuner.collect_calls(model, x, passes=("forward",)))
    with pytest.raises(ValueError, match="passes"):
        tuner.collect_calls(model, x, passes=("sideways",))


def test_tune_tunes_each_distinct_call_once_and_the_second_run_hits(tmp_path):
    cache = TuningCache(tmp_path / "tuning.json")
    model, x = small_model(), torch.randn(2, 8, 6, 6)
    table = tritonconv.tune(model, x, cache=cache, timer=unit_clock, max_tiles=1, progress=False)
    # hetconv 8->16, hetconv 16->16 (layers 4 and 5 share it), depthwise: forward and backward each
    assert len(table) == 6 and set(table["cache"]) == {"new"}
    shared = table[(table["operator"] == "hetconv") & table["spec"].str.startswith("16->16")]
    assert set(shared["module"]) == {"4, 5"}
    assert set(table.columns) >= {"module", "spec", "pass", "winner", "tiles", "triton ms", "fallback ms",
                                  "speedup", "cache"}
    for call in tuner.collect_calls(model, x):  # what was stored is what the dispatcher reads on a GPU
        row = table[(table["spec"] == call.spec.describe()) & (table["pass"] == call.pass_)].iloc[0]
        decision = dispatch.decide(call.operator, call.spec, call.pass_, torch.device("cuda"), cache=cache)
        assert decision.backend == row["winner"] and "measured" in decision.reason

    again = tritonconv.tune(model, x, cache=cache, timer=unit_clock, max_tiles=1, progress=False)
    assert set(again["cache"]) == {"hit"} and list(again["winner"]) == list(table["winner"])
    forced = tritonconv.tune(model, x, passes=("forward",), force=True, cache=cache, timer=unit_clock, max_tiles=1,
                             progress=False)
    assert set(forced["pass"]) == {"forward"} and set(forced["cache"]) == {"new"}


def test_without_a_gpu_tune_checks_every_candidate_and_stores_nothing(tmp_path):
    cache = TuningCache(tmp_path / "tuning.json")
    table = tritonconv.tune(small_model(), torch.randn(2, 8, 6, 6), passes=("forward",), cache=cache, max_tiles=2,
                            progress=False)
    assert len(table) == 3 and table["cache"].str.startswith("checked").all()
    assert (table["failed tiles"] == 0).all()
    assert not cache.path.exists()


def test_cli_tunes_a_model_from_a_factory(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_models.py").write_text(
        "import torch.nn as nn\nimport tritonconv\n\n"
        "def build():\n    return nn.Sequential(tritonconv.HetConv2d(8, 16, 3, p=4), nn.ReLU())\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["--model", "my_models:build", "--input-shape", "2,8,6,6", "--dtype", "fp32", "--max-tiles", "1",
                 "--pass", "fwd"]) == 0
    out = capsys.readouterr().out
    assert "hetconv" in out and "checked" in out and "all candidate tiles match the reference" in out
    with pytest.raises(SystemExit, match="--model nosuchmodule:build"):
        main(["--model", "nosuchmodule:build", "--input-shape", "2,8,6,6"])
    with pytest.raises(SystemExit, match="--input-shape 2,x"):
        main(["--model", "my_models:build", "--input-shape", "2,x"])
    sys.modules.pop("my_models", None)
