"""The tuner's logic and its command line (GPU timing itself is replaced by a stand-in clock here)."""

import json

import pytest
import torch

from autotune.cli import build_parser, main, tune
from tritonconv import dispatch, tuner
from tritonconv.ops.hetconv import HetConvSpec
from tritonconv.ops.hetconv.adapter import ADAPTER
from tritonconv.tuning_cache import TuningCache

SPEC = HetConvSpec(2, 8, 8, 6, 5, 3, 1, 2, True, "float32")


class BrokenTileAdapter:
    """The real adapter, except that one tile fails to compile and one computes garbage."""

    def __init__(self, broken, wrong):
        self.broken, self.wrong = broken, wrong

    def __getattr__(self, name):
        return getattr(ADAPTER, name)

    def triton(self, kernel, work, tile):
        if tile == self.broken:
            def fail():
                raise RuntimeError("out of resource: shared memory, Required: 300000, Hardware limit: 232448")
            return fail
        run = ADAPTER.triton(kernel, work, tile)
        if tile == self.wrong:
            return lambda: tuple(t + 1 for t in run())
        return run


@pytest.fixture
def fake_clock(monkeypatch):
    """Every run takes 1 ms."""
    def time_ms(fn):
        fn()
        return 1.0
    monkeypatch.setattr(tuner, "time_ms", time_ms)


def test_tune_pass_records_failures_and_stores_the_winner(tmp_path, fake_clock):
    cache = TuningCache(tmp_path / "tuning.json")
    tiles = ADAPTER.candidate_tiles(SPEC, "forward")
    adapter = BrokenTileAdapter(broken=tiles[0], wrong=tiles[1])
    device = torch.device("cpu")
    result = tuner.tune_pass(adapter, SPEC, "forward", device, cache, max_tiles=4)
    assert not result.cache_hit
    assert "out of resource" in result.failed[f"forward:{tiles[0].label()}"]
    assert "wrong result" in result.failed[f"forward:{tiles[1].label()}"]
    assert result.tiles["forward"] in (tiles[2].to_dict(), tiles[3].to_dict())
    entry = cache.lookup(ADAPTER.operator.cache_key(SPEC, "forward", device))
    assert entry["winner"] == result.winner and len(entry["timings_ms"]["candidates"]) == 2

    again = tuner.tune_pass(adapter, SPEC, "forward", device, cache)  # a second process pays nothing
    assert again.cache_hit and again.tiles == result.tiles


def test_tune_backward_times_both_kernels_then_the_pass(tmp_path):
    """Each kernel's tiles are timed alone; the Triton time set against the fallback is the whole pass at
    the chosen tiles, as a layer call runs it (dwsep's kernels share a launch: their sum would count it twice)."""
    cache = TuningCache(tmp_path / "tuning.json")
    timer = noisy_timer(lambda what: {"pass": 1.5, "fallback": 3.0}.get(what, 1.0), seed=0, noise=0.0)
    result = tuner.tune_pass(TaggedAdapter(), SPEC, "backward", torch.device("cpu"), cache, max_tiles=2, timer=timer)
    assert set(result.tiles) == {"backward_input", "backward_weight"}
    assert result.triton_ms == 1.5 and result.fallback_ms == 3.0 and result.winner == "triton"
    assert cache.lookup(ADAPTER.operator.cache_key(SPEC, "backward", torch.device("cpu")))["timings_ms"]["spread"][
        "triton"] == [1.5, 1.5]


def test_a_pass_that_fails_at_its_chosen_tiles_goes_to_the_fallback_without_tiles(tmp_path):
    """Each kernel alone is right, their pass together is not (or raises): the entry records why, keeps no
    tiles (a forced Triton call takes the defaults) and the fallback wins, however fast the pass was."""
    class WrongPass(TaggedAdapter):
        def triton_pass(self, pass_, work, tiles):
            run = ADAPTER.triton_pass(pass_, work, tiles)

            def wrong():
                return tuple(t * 2 for t in run())
            wrong.what = "pass"
            return wrong

    cache = TuningCache(tmp_path / "tuning.json")
    timer = noisy_timer(lambda what: {"pass": 0.1, "fallback": 3.0}.get(what, 1.0), seed=0, noise=0.0)
    result = tuner.tune_pass(WrongPass(), SPEC, "backward", torch.device("cpu"), cache, max_tiles=1, timer=timer)
    assert result.winner == "fallback" and result.triton_ms is None and result.tiles == {}
    assert "wrong result" in result.failed[dispatch.pass_failure_key("backward")]
    entry = cache.lookup(ADAPTER.operator.cache_key(SPEC, "backward", torch.device("cpu")))
    assert entry["tiles"] == {} and "triton" not in entry["timings_ms"]["spread"]


def test_every_candidate_tile_is_right_under_the_interpreter():
    for spec in (SPEC, HetConvSpec(1, 12, 6, 7, 4, 3, 2, 3, False, "float16"), HetConvSpec(1, 8, 8, 5, 5, 5, 1, 4)):
        for pass_ in ("forward", "backward"):
            assert tuner.validate_candidates(ADAPTER, spec, pass_, torch.device("cpu")) == {}


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
    specs = ADAPTER.specs_for("vgg16_cifar", batch=128, dtype="bfloat16")
    assert sum(count for _, count, _ in specs) == 12
    assert all(spec.p == 4 and spec.in_channels != 3 for _, _, spec in specs)
    assert sum(count for _, count, _ in ADAPTER.specs_for("resnet50", batch=1, dtype="float32")) == 16


def test_tuned_entry_is_what_dispatch_reads(tmp_path, fake_clock, monkeypatch):
    cache = TuningCache(tmp_path / "tuning.json")
    result = tuner.tune_pass(ADAPTER, SPEC, "forward", torch.device("cpu"), cache, max_tiles=2)
    monkeypatch.setattr("tritonconv.dispatch.default_cache", lambda: cache)
    decision = dispatch.decide(ADAPTER.operator, SPEC, "forward", torch.device("cuda"))
    assert decision.backend == result.winner


def test_tuning_into_a_cache_that_cannot_be_written_reports_it_and_goes_on(tmp_path, fake_clock, every_warning):
    (tmp_path / "cache").write_text("a file where the cache folder should be")
    cache = TuningCache(tmp_path / "cache" / "tuning.json")
    results = [tuner.tune_pass(ADAPTER, SPEC, pass_, torch.device("cpu"), cache, max_tiles=1)
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
    specs = ADAPTER.specs_for("vgg16_cifar", batch=1, dtype="float32")[:1]
    table = tune(ADAPTER, [(label, count, ADAPTER.shrink(spec)) for label, count, spec in specs], args,
                 torch.device("cpu"))
    assert list(table["cache"]) == ["not saved"]
    assert [w for w in every_warning if "cannot be read (Not a directory" in str(w.message)]
    assert [w for w in every_warning if str(w.message).endswith("tuning results are not saved")]
    assert "NOT SAVED: cannot write the tuning cache" in capsys.readouterr().out


def test_a_malformed_cached_entry_is_measured_again_and_replaced(tmp_path, fake_clock, every_warning):
    cache = TuningCache(tmp_path / "tuning.json")
    key = ADAPTER.operator.cache_key(SPEC, "forward", torch.device("cpu"))
    tile = {"block_rows": 16, "block_cols": 16, "block_reduce": 16, "num_warps": 4, "num_stages": 3, "splits": 0}
    cache.store(key, {"winner": "triton", "tiles": {"forward": tile}, "timings_ms": {"triton": 1.0, "fallback": 2.0}})
    (tmp_path / "tuning.json").write_text((tmp_path / "tuning.json").read_text().replace('"num_warps": 4',
                                                                                         '"num_warps": 5'))
    result = tuner.tune_pass(ADAPTER, SPEC, "forward", torch.device("cpu"), cache, max_tiles=1)
    assert not result.cache_hit
    assert any("num_warps=5" in str(w.message) for w in every_warning)
    assert cache.lookup(key, ("forward",))["tiles"] == result.tiles  # the new measurement took its place


class TaggedAdapter:
    """The real adapter, with each closure tagged by what it runs (its tile, or "fallback") for a timer."""

    def __getattr__(self, name):
        return getattr(ADAPTER, name)

    def triton(self, kernel, work, tile):
        run = ADAPTER.triton(kernel, work, tile)

        def tagged():
            return run()
        tagged.what = tile
        return tagged

    def triton_pass(self, pass_, work, tiles):
        run = ADAPTER.triton_pass(pass_, work, tiles)

        def tagged():
            return run()
        tagged.what = "pass"
        return tagged

    def fallback(self, pass_, work):
        run = ADAPTER.fallback(pass_, work)

        def tagged():
            return run()
        tagged.what = "fallback"
        return tagged


def noisy_timer(true_ms, seed, noise=0.01):
    """A clock giving each closure its true time, each percentile off by up to +-``noise``."""
    import random
    rng = random.Random(seed)

    def timer(fn):
        ms = true_ms(fn.what)
        p20, p50, p80 = sorted(ms * (1 + rng.uniform(-noise, noise)) for _ in range(3))
        return tuner.Timing(p20, p50, p80)
    return timer


def test_near_tied_tiles_give_the_same_winner_on_every_re_tuning(tmp_path):
    cache = TuningCache(tmp_path / "tuning.json")
    tiles = ADAPTER.candidate_tiles(SPEC, "forward")[:3]
    tied = tiles[:2]
    smaller = min(tied, key=tuner.tile_size_key)
    true_ms = {tiles[0]: 1.0, tiles[1]: 1.005, tiles[2]: 2.0, "fallback": 5.0}
    winners = set()
    for seed in range(5):
        result = tuner.tune_pass(TaggedAdapter(), SPEC, "forward", torch.device("cpu"), cache, force=True,
                                 max_tiles=3, timer=noisy_timer(true_ms.__getitem__, seed))
        assert result.winner == "triton"
        winners.add(tuple(sorted(result.tiles["forward"].items())))
    assert winners == {tuple(sorted(smaller.to_dict().items()))}
    entry = cache.lookup(ADAPTER.operator.cache_key(SPEC, "forward", torch.device("cpu")))
    spread = entry["timings_ms"]["spread"]
    assert set(spread) == {f"forward:{t.label()}" for t in tiles} | {"fallback", "triton"}
    assert spread["triton"] == spread[f"forward:{smaller.label()}"]  # the pass is its one kernel
    assert all(p20 <= entry["timings_ms"]["candidates"].get(name, p20) <= p80 for name, (p20, p80) in spread.items())


@pytest.mark.parametrize("fallback_ms, winner", [(1.01, "fallback"), (0.99, "fallback"), (1.5, "triton")])
def test_a_triton_win_inside_the_noise_band_goes_to_the_fallback(tmp_path, fallback_ms, winner):
    cache = TuningCache(tmp_path / "tuning.json")
    for seed in range(3):
        result = tuner.tune_pass(TaggedAdapter(), SPEC, "forward", torch.device("cpu"), cache, force=True,
                                 max_tiles=1, timer=noisy_timer(lambda what: fallback_ms if what == "fallback" else 1.0,
                                                                seed))
        assert result.winner == winner


def test_the_tie_rules():
    assert tuner.NOISE_BAND == 0.03
    assert tuner.pick_winner(1.0, 1.029) == "fallback" and tuner.pick_winner(1.0, 1.031) == "triton"
    assert tuner.pick_winner(None, 9.0) == "fallback"
    big, small = ADAPTER.candidate_tiles(SPEC, "forward")[:2]
    if tuner.tile_size_key(big) < tuner.tile_size_key(small):
        big, small = small, big
    assert tuner.pick_tile([(big, 1.0), (small, 1.02)]) == (small, 1.02)
    assert tuner.pick_tile([(big, 1.0), (small, 1.04)]) == (big, 1.0)


def test_export_then_import_into_an_empty_cache_gives_the_same_decisions(tmp_path, fake_clock):
    tuned = TuningCache(tmp_path / "a" / "tuning.json")
    other = HetConvSpec(1, 8, 16, 5, 5, 3, 1, 4, False, "float32")
    for spec in (SPEC, other):
        for pass_ in ("forward", "backward"):
            tuner.tune_pass(ADAPTER, spec, pass_, torch.device("cpu"), tuned, max_tiles=2)
    shipped = tmp_path / "shipped.json"
    assert main(["--cache", str(tuned.path), "--export", str(shipped)]) == 0
    empty = TuningCache(tmp_path / "b" / "tuning.json")
    assert main(["--cache", str(empty.path), "--import", str(shipped)]) == 0
    assert empty.entries() == tuned.entries() and len(empty.entries()) == 4
    for spec in (SPEC, other):
        for pass_ in ("forward", "backward"):
            before = dispatch.decide(ADAPTER.operator, spec, pass_, torch.device("cuda"), cache=tuned)
            after = dispatch.decide(ADAPTER.operator, spec, pass_, torch.device("cuda"), cache=empty)
            assert after == before and "measured" in after.reason


def test_the_cache_key_carries_the_torch_version():
    key = ADAPTER.operator.cache_key(SPEC, "forward", torch.device("cpu"))
    assert key.torch == torch.__version__ and f"|{torch.__version__}|" in str(key)


@pytest.mark.parametrize("content, says", [
    (b"{not json", "is not valid JSON"),
    (b'{"format": 99, "entries": {}}', "has format 99"),
    (None, "num_warps=5"),
    ("bad key", "is not a key op|pass|shape"),
    ("unknown op", "no operator 'nosuchop'"),
    ("wrong kernel", "not a kernel of this pass"),
])
def test_a_malformed_import_is_refused_and_leaves_the_cache_untouched(tmp_path, fake_clock, content, says):
    cache = TuningCache(tmp_path / "tuning.json")
    tuner.tune_pass(ADAPTER, SPEC, "forward", torch.device("cpu"), cache, max_tiles=1)
    before = cache.path.read_bytes()
    good = tmp_path / "good.json"
    cache.export(good)
    data = json.loads(good.read_text())
    name, entry = next(iter(data["entries"].items()))
    if content is None:
        entry["tiles"]["forward"]["num_warps"] = 5
    elif content == "bad key":
        data["entries"]["hetconv|forward"] = entry
    elif content == "unknown op":
        data["entries"]["nosuchop" + name[len("hetconv"):]] = entry
    elif content == "wrong kernel":
        entry["tiles"]["backward_weight"] = entry["tiles"]["forward"]
    bad = tmp_path / "bad.json"
    bad.write_bytes(content if isinstance(content, bytes) else json.dumps(data).encode())
    with pytest.raises(SystemExit, match="cannot import .*bad.json") as refused:
        main(["--cache", str(cache.path), "--import", str(bad)])
    assert says in str(refused.value) and "the tuning cache was not changed" in str(refused.value)
    assert cache.path.read_bytes() == before


def test_export_and_import_need_no_layer(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--shapes", "vgg16"])
    assert "--layer and --shapes are required" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="cannot import .*missing.json"):
        main(["--cache", str(tmp_path / "tuning.json"), "--import", str(tmp_path / "missing.json")])


def test_the_gpu_clock_gives_p20_p50_p80(monkeypatch):
    import triton.testing
    asked = {}

    def do_bench(fn, warmup, rep, quantiles):
        asked["quantiles"] = quantiles
        return [1.0, 2.0, 3.5]
    monkeypatch.setattr(triton.testing, "do_bench", do_bench)
    assert tuner.time_ms(lambda: None) == tuner.Timing(1.0, 2.0, 3.5) and asked["quantiles"] == [0.2, 0.5, 0.8]


def test_the_session_check_knows_export_import_and_model(tmp_path):
    from perf.session_check import CheckFailed, check_autotune
    assert "no shape set" in check_autotune(["--cache", str(tmp_path / "tuning.json"), "--export", "x.json"])
    with pytest.raises(CheckFailed, match="--layer and --shapes are required"):
        check_autotune(["--shapes", "vgg16"])
