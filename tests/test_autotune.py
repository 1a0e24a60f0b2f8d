"""The tuner's logic and its command line (GPU timing itself is replaced by a stand-in clock here)."""

import json

import pytest
import torch

from autotune import tuner
from autotune.cli import build_parser, main, tune
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


def test_tuning_into_a_cache_that_cannot_be_written_reports_it_and_goes_on(tmp_path, fake_clock, every_warning):
    (tmp_path / "cache").write_text("a file where the cache folder should be")
    cache = TuningCache(tmp_path / "cache" / "tuning.json")
    results = [tuner.tune_pass(HARNESS, SPEC, pass_, torch.device("cpu"), cache, max_tiles=1)
               for pass_ in ("forward", "backward")]
    for result in results:
        assert not result.cache_hit and result.winner in ("triton", "fallback") and result.fallback_ms == 1.0
        assert "cannot write the tuning cache" in result.not_saved and "is a file, not a folder" in result.not_saved
    messages = [str(w.message) for w in every_warning if issubclass(w.category, RuntimeWarning)]
    assert len([m for m in messages if m.endswith("tuning results are not saved")]) == 2  # one per pass
    assert len([m for m in messages if "cannot be read (Not a directory" in m]) == 1  # one per file version
    assert (tmp_path / "cache").read_text() == "a file where the cache folder should be"


def test_cli_table_says_the_results_were_not_saved(tmp_path, fake_clock, capsys, every_warning):
    (tmp_path / "cache").write_text("not a folder")
    args = build_parser().parse_args(["--layer", "hetconv", "--shapes", "vgg16_cifar", "--max-tiles", "1",
                                      "--pass", "fwd", "--cache", str(tmp_path / "cache" / "tuning.json")])
    specs = HARNESS.specs_for("vgg16_cifar", batch=1, dtype="float32")[:1]
    table = tune(HARNESS, [(label, count, HARNESS.shrink(spec)) for label, count, spec in specs], args,
                 torch.device("cpu"))
    assert list(table["cache"]) == ["not saved"]
    assert [w for w in every_warning if "cannot be read (Not a directory" in str(w.message)]
    assert [w for w in every_warning if str(w.message).endswith("tuning results are not saved")]
    assert "NOT SAVED: cannot write the tuning cache" in capsys.readouterr().out


def test_a_malformed_cached_entry_is_measured_again_and_replaced(tmp_path, fake_clock, every_warning):
    cache = TuningCache(tmp_path / "tuning.json")
    key = HARNESS.operator.cache_key(SPEC, "forward", torch.device("cpu"))
    tile = {"block_rows": 16, "block_cols": 16, "block_reduce": 16, "num_warps": 4, "num_stages": 3, "splits": 0}
    cache.store(key, {"winner": "triton", "tiles": {"forward": tile}, "timings_ms": {"triton": 1.0, "fallback": 2.0}})
    (tmp_path / "tuning.json").write_text((tmp_path / "tuning.json").read_text().replace('"num_warps": 4',
                                                                                         '"num_warps": 5'))
    result = tuner.tune_pass(HARNESS, SPEC, "forward", torch.device("cpu"), cache, max_tiles=1)
    assert not result.cache_hit
    assert any("num_warps=5" in str(w.message) for w in every_warning)
    assert cache.lookup(key, ("forward",))["tiles"] == result.tiles  # the new measurement took its place
