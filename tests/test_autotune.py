"""The tuner's logic and its command line (GPU timing itself is replaced by a stand-in clock here)."""

import json

import pytest
import torch

from autotune import tuner
from autotune.cli import main
from tritonconv import dispatch
from tritonconv.ops.hetconv import HetConvSpec
from tritonconv.ops.hetconv.harness import HARNESS
from tritonconv.tuning_cache import TuningCache

SPEC = HetConvSpec(2, 8, 8, 6, 5, 3, 1, 2, True, "float32")


class BrokenTileHarness:
    """The real harness, except that one tile fails to compile and one computes garbage."""

    def __init__(self, broken, wrong):
        self.broken, self.wrong = broken, wrong

    def __getattr__(self, name):
        return getattr(HARNESS, name)

    def triton(self, kernel, work, tile):
        if tile == self.broken:
            def fail():
                raise RuntimeError("out of resource: shared memory, Required: 300000, Hardware limit: 232448")
            return fail
        run = HARNESS.triton(kernel, work, tile)
        if tile == self.wrong:
            return lambda: tuple(t + 1 for t in run())
        return run


@pytest.fixture
def fake_clock(monkeypatch):
    """Every run takes 1 ms: a Triton pass costs 1 ms per kernel, so a two-kernel backward loses."""
    def time_ms(fn):
        fn()
        return 1.0
    monkeypatch.setattr(tuner, "time_ms", time_ms)


def test_tune_pass_records_failures_and_stores_the_winner(tmp_path, fake_clock):
    cache = TuningCache(tmp_path / "tuning.json")
    tiles = HARNESS.candidate_tiles(SPEC, "forward")
    harness = BrokenTileHarness(broken=tiles[0], wrong=tiles[1])
    device = torch.device("cpu")
    result = tuner.tune_pass(harness, SPEC, "forward", device, cache, max_tiles=4)
    assert not result.cache_hit
    assert "out of resource" in result.failed[f"forward:{tiles[0].label()}"]
    assert "wrong result" in result.failed[f"forward:{tiles[1].label()}"]
    assert result.tiles["forward"] in (tiles[2].to_dict(), tiles[3].to_dict())
    entry = cache.lookup(HARNESS.operator.cache_key(SPEC, "forward", device))
    assert entry["winner"] == result.winner and len(entry["timings_ms"]["candidates"]) == 2

    again = tuner.tune_pass(harness, SPEC, "forward", device, cache)  # a second process pays nothing
    assert again.cache_hit and again.tiles == result.tiles


def test_tune_backward_times_both_kernels(tmp_path, fake_clock):
    cache = TuningCache(tmp_path / "tuning.json")
    result = tuner.tune_pass(HARNESS, SPEC, "backward", torch.device("cpu"), cache, max_tiles=2)
    assert set(result.tiles) == {"backward_input", "backward_weight"}
    assert result.triton_ms == 2.0 and result.fallback_ms == 1.0 and result.winner == "fallback"


def test_every_candidate_tile_is_right_under_the_interpreter():
    for spec in (SPEC, HetConvSpec(1, 12, 6, 7, 4, 3, 2, 3, False, "float16"), HetConvSpec(1, 8, 8, 5, 5, 5, 1, 4)):
        for pass_ in ("forward", "backward"):
            assert tuner.validate_candidates(HARNESS, spec, pass_, torch.device("cpu")) == {}


def test_cli_without_gpu_checks_candidates_and_prints_the_table(tmp_path, capsys):
    shapes = tmp_path / "shapes.json"
    shapes.write_text(json.dumps([{"in_channels": 16, "out_channels": 32, "height": 9, "width": 7, "stride": 2,
                                   "name": "mine"}]))
    assert main(["--layer", "hetconv", "--shapes", str(shapes), "--dtype", "fp16", "--max-tiles", "2"]) == 0
    out = capsys.readouterr().out
    assert "No CUDA GPU" in out and "mine: 16->32 k3 s2 p4 9x7 b128" in out
    assert "all candidate tiles match the reference" in out
    assert not (tmp_path / "cache" / "tuning.json").exists()


def test_cli_help_and_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "persistent tuning cache" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="'alexnet' is not a shape set of --layer hetconv"):
        main(["--layer", "hetconv", "--shapes", "alexnet"])
    bad = tmp_path / "bad.json"
    bad.write_text('[{"in_channels": 16}]')
    with pytest.raises(SystemExit, match="entry 0 .* needs in_channels, out_channels, height"):
        main(["--layer", "hetconv", "--shapes", str(bad)])
    with pytest.raises(SystemExit, match="no convolution there fits"):
        main(["--layer", "hetconv", "--shapes", "vgg16", "--p", "3"])


def test_vgg16_shape_set_is_the_twelve_hetconv_layers():
    specs = HARNESS.specs_for("vgg16_cifar", batch=128, dtype="bfloat16")
    assert sum(count for _, count, _ in specs) == 12
    assert all(spec.p == 4 and spec.in_channels != 3 for _, _, spec in specs)
    assert sum(count for _, count, _ in HARNESS.specs_for("resnet50", batch=1, dtype="float32")) == 16


def test_tuned_entry_is_what_dispatch_reads(tmp_path, fake_clock, monkeypatch):
    cache = TuningCache(tmp_path / "tuning.json")
    result = tuner.tune_pass(HARNESS, SPEC, "forward", torch.device("cpu"), cache, max_tiles=2)
    monkeypatch.setattr("tritonconv.dispatch.default_cache", lambda: cache)
    decision = dispatch.decide(HARNESS.operator, SPEC, "forward", torch.device("cuda"))
    assert decision.backend == result.winner
