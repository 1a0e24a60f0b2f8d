"""The host-side integer helpers of ``tritonconv.tiles`` agree with triton's own (which are constexpr
functions, too slow to call per layer call)."""

import triton

from tritonconv.tiles import GemmTile, cdiv, next_power_of_2


def test_cdiv_and_next_power_of_2_agree_with_triton():
    for n in range(1, 2050):
        assert next_power_of_2(n) == triton.next_power_of_2(n)
        for d in (1, 3, 16, 64, 127):
            assert cdiv(n, d) == triton.cdiv(n, d)
    assert next_power_of_2(0) == 1 and cdiv(0, 16) == 0


def test_fitted_never_shrinks_below_the_dot_minimum_nor_grows():
    tile = GemmTile(128, 64, 64)
    assert tile.fitted(5, 1000, 33) == GemmTile(16, 64, 64)
    assert tile.fitted(100, 17, 1) == GemmTile(128, 32, 16)


def test_every_operator_declares_its_tiles_in_a_hashed_table():
    """Each kernel an operator tunes has a ``TileTable`` entry in a launcher the tuning cache hashes (so a
    new candidate reaches shapes already tuned); every default and candidate is a tile the cache accepts."""
    import importlib
    from pathlib import Path

    from tritonconv.ops.registry import ADAPTERS
    from tritonconv.tiles import TileTable, tile_dict_problem

    for name, adapter in ADAPTERS.items():
        operator = adapter.operator
        tables = {}
        for source in operator.kernel_sources:
            if source.name == "launch.py":
                module = importlib.import_module(f"tritonconv.ops.{source.parent.name}.launch")
                assert isinstance(module.TILES, TileTable), source
                tables.update({kernel: module.TILES for kernel in module.TILES.kernels})
        for kernel in (k for kernels in operator.kernels_of_pass.values() for k in kernels):
            assert kernel in tables, (name, kernel)
            spec = adapter.specs_for(adapter.shape_sets[0], batch=8, dtype="bfloat16")[0][2]
            for tile in (operator.default_tile(spec, kernel), *operator.candidate_tiles(spec, kernel)):
                assert tile_dict_problem(tile.to_dict()) is None, (name, kernel, tile)
        assert all(Path(source).exists() for source in operator.kernel_sources)
