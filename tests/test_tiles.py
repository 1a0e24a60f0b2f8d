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
