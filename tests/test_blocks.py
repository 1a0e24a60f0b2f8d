"""The block catalogue: parameter counts and count_macs against the closed forms, shapes, the shift."""

import math

import pytest
import torch

from tritonconv import blocks, count_macs
from tritonconv.convert import convert
from tritonconv.ops.linearconv import LinearConv2d


def parameter_count(module):
    return sum(t.numel() for t in module.parameters())


def test_fire():
    fire = blocks.Fire(128, 16, 64, 64)
    assert parameter_count(fire) == 12_432
    c, s, e1, e3, h, w = 128, 16, 64, 64, 7, 5
    assert count_macs(fire, (2, c, h, w)) == 2 * h * w * (c * s + s * e1 + 9 * s * e3)
    assert fire(torch.randn(2, c, h, w)).shape == (2, e1 + e3, h, w)
    # our layers inside: the 3x3 expand as LinearConv (P = 32 primaries, 32 x 32 coefficients)
    report = convert(fire, to=LinearConv2d, filter_fn=lambda name, conv: conv.kernel_size == (3, 3))
    assert [layer.name for layer in report.converted] == ["expand3x3"]
    assert parameter_count(fire) == 12_432 - (9 * s * e3) + (32 * s * 9 + 32 * 32)


@pytest.mark.parametrize("stride", [1, 2])
def test_mobilenet_v1_block(stride):
    c, n, h = 16, 24, 8
    block = blocks.MobileNetV1Block(c, n, stride)
    assert parameter_count(block) == c * 9 + 2 * c + c * n + 2 * n
    ho = (h - 1) // stride + 1
    assert count_macs(block, (1, c, h, h)) == ho * ho * c * (9 + n)
    assert block(torch.randn(1, c, h, h)).shape == (1, n, ho, ho)


@pytest.mark.parametrize("c, n, stride, t", [(16, 16, 1, 6), (16, 24, 2, 6), (32, 16, 1, 1)])
def test_inverted_residual(c, n, stride, t):
    block = blocks.InvertedResidual(c, n, stride, t)
    hidden = c * t
    expand = c * hidden + 2 * hidden if t != 1 else 0
    assert parameter_count(block) == expand + 9 * hidden + 2 * hidden + hidden * n + 2 * n
    h = 8
    ho = (h - 1) // stride + 1
    expand_macs = h * h * c * hidden if t != 1 else 0
    assert count_macs(block, (1, c, h, h)) == expand_macs + ho * ho * hidden * (9 + n)
    assert block.use_residual == (stride == 1 and c == n)
    assert block(torch.randn(2, c, h, h)).shape == (2, n, ho, ho)


def test_shift_follows_the_interleaved_definition():
    torch.manual_seed(0)
    k, d, channels = 3, 2, 20  # R = 18 shifted channels, 2 left alone
    x = torch.randn(2, channels, 6, 7)
    s = blocks.shift(x, k, d)
    for c in range(channels):
        dh, dw = (d * (((c // k) % k) - k // 2), d * ((c % k) - k // 2)) if c < 18 else (0, 0)
        for h in range(6):
            for w in range(7):
                inside = 0 <= h + dh < 6 and 0 <= w + dw < 7
                want = x[:, c, h + dh, w + dw] if inside else torch.zeros(2)
                assert torch.equal(s[:, c, h, w], want)
    assert parameter_count(blocks.Shift()) == 0


@pytest.mark.parametrize("c, n, stride, expansion", [(16, 16, 1, 1), (16, 32, 2, 0.5)])
def test_csc_block(c, n, stride, expansion):
    block = blocks.CSCBlock(c, n, stride, expansion)
    m = int(n * expansion)
    projection = stride != 1 or c != n
    assert parameter_count(block) == c * m + 2 * m + m * n + 2 * n + (c * n + 2 * n if projection else 0)
    h = 8
    ho = (h - 1) // stride + 1
    assert count_macs(block, (1, c, h, h)) == h * h * c * m + ho * ho * m * n + (ho * ho * c * n if projection else 0)
    assert block(torch.randn(1, c, h, h)).shape == (1, n, ho, ho)


@pytest.mark.parametrize("c, out, k, ratio, dw, stride", [(16, 32, 1, 2, 3, 1), (8, 15, 3, 3, 5, 2)])
def test_ghost_module(c, out, k, ratio, dw, stride):
    module = blocks.GhostModule(c, out, k, ratio, dw, stride)
    m = math.ceil(out / ratio)
    assert parameter_count(module) == m * c * k * k + 2 * m + m * (ratio - 1) * (dw * dw + 2)
    h = 8
    ho = (h + 2 * (k // 2) - k) // stride + 1
    assert count_macs(module, (1, c, h, h)) == ho * ho * m * (c * k * k + (ratio - 1) * dw * dw)
    assert module(torch.randn(2, c, h, h)).shape == (2, out, ho, ho)


def test_ghost_bottleneck():
    c, mid, n, h = 16, 48, 24, 8
    block = blocks.GhostBottleneck(c, mid, n, 3, stride=2, se_ratio=0.25)

    def ghost(cin, cout):
        m = math.ceil(cout / 2)
        return m * cin + 2 * m + m * (9 + 2)

    reduced = blocks._make_divisible(mid * 0.25, 4)
    se = mid * reduced + reduced + reduced * mid + mid
    shortcut = c * 9 + 2 * c + c * n + 2 * n
    assert parameter_count(block) == ghost(c, mid) + (mid * 9 + 2 * mid) + se + ghost(mid, n) + shortcut
    assert block(torch.randn(2, c, h, h)).shape == (2, n, h // 2, h // 2)
    identity = blocks.GhostBottleneck(n, mid, n)
    assert len(identity.shortcut) == 0 and identity.se is None
    x = torch.randn(1, n, h, h)
    assert identity(x).shape == x.shape


@pytest.mark.parametrize("make, match", [
    (lambda: blocks.Fire(128, 0, 64, 64), "squeeze=0"),
    (lambda: blocks.InvertedResidual(16, 16, 3), "stride=3 must be 1 or 2"),
    (lambda: blocks.InvertedResidual(16, 16, 1, 0.5), "expand_ratio=0.5"),
    (lambda: blocks.GhostModule(16, 16, ratio=1), "ratio=1"),
    (lambda: blocks.Shift(kernel_size=4), "kernel_size=4 must be odd"),
    (lambda: blocks.GhostBottleneck(16, 16, 16, se_ratio=-1), "se_ratio=-1"),
])
def test_bad_hyperparameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()
