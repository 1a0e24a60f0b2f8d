"""Channel shuffle (SPEC section 6): the standalone function, the grouped 1 x 1 conv that shuffles in its
stores, and the ShuffleNet V1 unit, against float64 torch compositions."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from tritonconv.dispatch import use_backend
from tritonconv.ops.shuffle import ShuffledGroupConv2d, ShuffleUnit, channel_shuffle
from tritonconv.tiles import GemmTile

from conftest import DEVICE


def _oracle(layer: ShuffledGroupConv2d, x):
    return channel_shuffle(F.conv2d(x, layer.weight, layer.bias, groups=layer.groups), layer.shuffle_groups)


def _grads(module, x, forward, grad):
    module.zero_grad()
    x = x.detach().clone().requires_grad_()
    y = forward(x)
    y.backward(grad)
    return y.detach(), [x.grad] + [p.grad.clone() for p in module.parameters()]


def test_channel_shuffle_direction():
    x = torch.arange(6.0).reshape(1, 6, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]
    y = torch.randn(2, 12, 3, 4)
    torch.testing.assert_close(channel_shuffle(y, 3), torch.nn.ChannelShuffle(3)(y))
    torch.testing.assert_close(channel_shuffle(y.contiguous(memory_format=torch.channels_last), 4),
                               channel_shuffle(y, 4))


@pytest.mark.parametrize("in_c,out_c,groups,shuffle_groups,bias", [
    (12, 18, 3, 3, True), (6, 8, 2, 4, False), (24, 15, 1, 3, True), (10, 20, 5, 1, True)])
def test_fused_conv_forward_and_gradients_float64(in_c, out_c, groups, shuffle_groups, bias):
    torch.manual_seed(0)
    layer = ShuffledGroupConv2d(in_c, out_c, groups, shuffle_groups, bias, device=DEVICE, dtype=torch.float64)
    x = torch.randn(2, in_c, 5, 7, device=DEVICE, dtype=torch.float64)
    grad = torch.randn(2, out_c, 5, 7, device=DEVICE, dtype=torch.float64)
    y, ours = _grads(layer, x, layer, grad)
    y_ref, want = _grads(layer, x, lambda t: _oracle(layer, t), grad)
    torch.testing.assert_close(y, y_ref)
    for a, b in zip(ours, want):
        torch.testing.assert_close(a, b)


def test_fused_conv_layouts_fallback_and_low_precision():
    layer = ShuffledGroupConv2d(12, 12, 3, 3, True, device=DEVICE, dtype=torch.float64)
    x = torch.randn(2, 12, 4, 6, device=DEVICE, dtype=torch.float64)
    grad = torch.randn(2, 12, 4, 6, device=DEVICE, dtype=torch.float64)
    _, want = _grads(layer, x, lambda t: _oracle(layer, t), grad)
    y, ours = _grads(layer, x.contiguous(memory_format=torch.channels_last), layer, grad)
    assert y.is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(ours, want):
        torch.testing.assert_close(a, b)
    with use_backend("fallback"):
        _, fallback = _grads(layer, x, layer, grad)
    for a, b in zip(fallback, want):
        torch.testing.assert_close(a, b)
    half = ShuffledGroupConv2d(12, 12, 3, 3, True, device=DEVICE, dtype=torch.float16)
    xh = x.half()
    with torch.no_grad():
        torch.testing.assert_close(half(xh).double(), _oracle(half.double(), xh.double()), atol=5e-3, rtol=5e-3)


def _unit_oracle(unit: ShuffleUnit, x):
    """The published unit: conv -> shuffle -> BN -> ReLU (BN and ReLU commute with the shuffle)."""
    c1 = unit.conv1
    branch = F.relu(unit.bn1(channel_shuffle(F.conv2d(x, c1.weight, None, groups=c1.groups), c1.shuffle_groups)))
    branch = unit.bn2(unit.dwconv(branch))
    branch = unit.bn3(F.conv2d(branch, unit.conv2.weight, None, groups=unit.conv2.groups))
    if unit.stride == 1:
        return F.relu(x + branch)
    return F.relu(torch.cat([F.avg_pool2d(x, 3, 2, 1), branch], 1))


@pytest.mark.parametrize("in_c,out_c,stride,train", [(24, 24, 1, True), (12, 48, 2, False)])
def test_shuffle_unit_matches_the_published_unit(in_c, out_c, stride, train):
    torch.manual_seed(0)
    unit = ShuffleUnit(in_c, out_c, groups=3, stride=stride, device=DEVICE, dtype=torch.float64).train(train)
    for bn in (unit.bn1, unit.bn2, unit.bn3):
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.normal_()
    x = torch.randn(2, in_c, 6, 5, device=DEVICE, dtype=torch.float64)
    grad = torch.randn(2, out_c, (6 - 1) // stride + 1, (5 - 1) // stride + 1, device=DEVICE, dtype=torch.float64)
    state = {k: v.clone() for k, v in unit.state_dict().items()}
    y, ours = _grads(unit, x, unit, grad)
    unit.load_state_dict(state)
    y_ref, want = _grads(unit, x, lambda t: _unit_oracle(unit, t), grad)
    torch.testing.assert_close(y, y_ref)
    for a, b in zip(ours, want):
        torch.testing.assert_close(a, b)


def test_batch_zero():
    layer = ShuffledGroupConv2d(6, 6, 3, 3, device=DEVICE)
    x = torch.randn(0, 6, 4, 4, device=DEVICE, requires_grad=True)
    y = layer(x)
    y.sum().backward()
    assert y.shape == (0, 6, 4, 4) and x.grad.shape == x.shape
    assert channel_shuffle(torch.randn(0, 6, 2, 2), 3).shape == (0, 6, 2, 2)


@pytest.mark.parametrize("call,error,words", [
    (lambda: channel_shuffle(torch.randn(1, 6, 2, 2), 4), ValueError, "groups=4 must divide"),
    (lambda: channel_shuffle(torch.randn(6, 2, 2), 2), ValueError, "4 dimensions"),
    (lambda: channel_shuffle("x", 2), TypeError, "torch.Tensor"),
    (lambda: ShuffledGroupConv2d(6, 8, 4), ValueError, "groups=4 must divide"),
    (lambda: ShuffledGroupConv2d(6, 8, 2, 3), ValueError, "shuffle_groups=3 must divide"),
    (lambda: ShuffledGroupConv2d(6, 6, 3)(torch.randn(1, 4, 2, 2)), ValueError, "input has 4 channels"),
    (lambda: ShuffledGroupConv2d(6, 6, 3)(torch.ones(1, 6, 2, 2, dtype=torch.int64)), TypeError, "int64"),
    (lambda: ShuffleUnit(24, 48, 3, stride=1), ValueError, "in_channels=24 must equal"),
    (lambda: ShuffleUnit(24, 24, 3, stride=3), ValueError, "stride=3"),
    (lambda: ShuffleUnit(24, 40, 3, stride=2), ValueError, "groups=3 must divide"),
])
def test_bad_input_is_refused_clearly(call, error, words):
    with pytest.raises(error, match=words):
        call()


def test_torch_compile_fullgraph_forward_and_backward():
    torch._dynamo.reset()
    unit = ShuffleUnit(12, 12, groups=3, device=DEVICE, dtype=torch.float64)
    compiled = torch.compile(unit, fullgraph=True,
                             backend="aot_eager" if DEVICE.type == "cpu" else "inductor")
    x = torch.randn(1, 12, 4, 4, device=DEVICE, dtype=torch.float64)
    grad = torch.randn(1, 12, 4, 4, device=DEVICE, dtype=torch.float64)
    state = {k: v.clone() for k, v in unit.state_dict().items()}
    y, ours = _grads(unit, x, compiled, grad)
    unit.load_state_dict(state)
    y_ref, want = _grads(unit, x, lambda t: _unit_oracle(unit, t), grad)
    torch.testing.assert_close(y, y_ref)
    for a, b in zip(ours, want):
        torch.testing.assert_close(a, b)


def test_opcheck():
    layer = ShuffledGroupConv2d(6, 6, 3, 3, True, device=DEVICE, dtype=torch.float64)
    x = torch.randn(1, 6, 3, 4, device=DEVICE, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(torch.ops.tritonconv.shuffle_conv1x1.default, (x, layer.weight, layer.bias, 3, 3),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def test_adapter_shape_sets_and_shrunk_kernels():
    from tritonconv.adapter import max_relative_error
    from tritonconv.ops.registry import ADAPTERS
    from tritonconv.ops.shuffle.adapter import ADAPTER

    assert ADAPTERS["shuffle"] is ADAPTER
    specs = ADAPTER.specs_for("shufflenet_v1", batch=2, dtype="float32")
    first = specs[0][2]
    assert (first.in_channels, first.out_channels, first.groups, first.shuffle_groups) == (24, 60, 1, 3)
    assert {spec.shuffle_groups for _, _, spec in specs if spec.shuffle_groups > 1} == {3, 8}
    assert sum(count for name, count, _ in specs if name.startswith("g8.")) == 2 * sum((4, 8, 4))
    assert all(spec.groups == 8 for _, _, spec in ADAPTER.specs_for("shufflenet_v1", batch=2, dtype="float32",
                                                                     groups=8)[1:])
    _, _, spec = specs[-1]  # g=8, stage 4: 384 -> 1536 in 8 groups
    work = ADAPTER.make_workload(ADAPTER.shrink(spec), DEVICE)
    for kernel in ("forward", "backward_input", "backward_weight"):
        tile = ADAPTER.candidate_tiles(work.spec, kernel)[0]
        assert max_relative_error(ADAPTER.triton(kernel, work, tile)(), ADAPTER.expected(kernel, work)) < 1e-4


@pytest.mark.gpu
def test_bfloat16_on_gpu():
    layer = ShuffledGroupConv2d(240, 60, 3, 3, device=DEVICE, dtype=torch.bfloat16)
    x = torch.randn(8, 240, 28, 28, device=DEVICE, dtype=torch.bfloat16)
    with torch.no_grad():
        got = layer(x).double()
        want = _oracle(layer.double(), x.double())
    assert (got - want).norm() / want.norm() < 3e-2


# ---- the dense backward paths (launch.backward_input/backward_weight with dense=True) ----------------
# dy's channels in memory order and the dense product of contiguous channel ranges, the other groups
# selected away (grad input) or not stored (grad weight). Small blocks, so that a layer spans several
# tiles, full reduction steps and a partial last one (sg = 3: 12-channel steps in 16-channel blocks).
_SMALL_TILE = GemmTile(16, 16, 16, 4, 1, splits=2)


def _dense_case(in_c, out_c, groups, channels_last, dtype, bias=True, shuffle_groups=None):
    from tritonconv.ops.shuffle.spec import ShuffleConvSpec

    shuffle_groups = groups if shuffle_groups is None else shuffle_groups
    spec = ShuffleConvSpec(2, in_c, out_c, 5, 7, groups, shuffle_groups, bias, str(dtype).split(".")[1],
                           channels_last)
    torch.manual_seed(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(spec.input_shape, device=DEVICE, dtype=dtype).contiguous(memory_format=layout)
    dy = torch.randn(spec.output_shape, device=DEVICE, dtype=dtype).contiguous(memory_format=layout)
    weight = torch.randn(spec.weight_shape, device=DEVICE, dtype=dtype)
    return spec, x, dy, weight


def _dense_grads(spec, x, dy, weight):
    from tritonconv.ops.shuffle import launch

    dx = launch.backward_input(dy, weight, spec, _SMALL_TILE, x, dense=True)
    dw, db = launch.backward_weight(dy, x, spec, _SMALL_TILE, dense=True)
    return dx, dw, db


# (in, out, groups, shuffle groups): sg = G, and unshuffled at odd group widths (the grad input's window)
_DENSE_SHAPES = [(15, 21, 3, 3), (24, 40, 8, 8), (48, 96, 8, 8), (36, 60, 3, 3),
                 (9, 63, 3, 1), (16, 56, 8, 1), (8, 168, 8, 1)]


@pytest.mark.parametrize("in_c,out_c,groups,shuffle_groups", _DENSE_SHAPES)
@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-4)])
def test_dense_backward_matches_float64_reference(in_c, out_c, groups, shuffle_groups, channels_last, dtype,
                                                  tolerance):
    from tritonconv.adapter import max_relative_error
    from tritonconv.ops.shuffle import reference

    spec, x, dy, weight = _dense_case(in_c, out_c, groups, channels_last, dtype, shuffle_groups=shuffle_groups)
    got = _dense_grads(spec, x, dy, weight)
    want = reference.fallback_backward(dy.double(), x.double(), weight.double(), spec, True, True)
    assert got[0].is_contiguous(memory_format=torch.channels_last) == channels_last
    for a, b in zip(got, want):
        assert a.shape == b.shape and max_relative_error(a.double(), b) < tolerance


@pytest.mark.parametrize("in_c,out_c,groups,shuffle_groups", [(15, 21, 3, 3), (24, 40, 8, 8), (16, 56, 8, 1)])
def test_dense_backward_keeps_a_nan_in_its_group(in_c, out_c, groups, shuffle_groups):
    """A NaN in one dy channel reaches exactly the grads the float64 formulation makes non-finite: the
    other groups' columns are selected away (never multiplied by zero) and their products not stored."""
    from tritonconv.ops.shuffle import reference

    spec, x, dy, weight = _dense_case(in_c, out_c, groups, True, torch.float64, shuffle_groups=shuffle_groups)
    for channel in (0, out_c // 2, out_c - 1):
        poisoned = dy.clone()
        poisoned[1, channel, 2, 3] = float("nan")
        got = _dense_grads(spec, x, poisoned, weight)
        want = reference.fallback_backward(poisoned, x, weight, spec, True, True)
        for a, b in zip(got, want):
            assert (~torch.isfinite(b)).any()
            assert torch.equal(torch.isfinite(a), torch.isfinite(b))
            torch.testing.assert_close(a[torch.isfinite(a)], b[torch.isfinite(b)])


def test_dense_paths_are_chosen_for_shuffled_groups_in_channels_last():
    from tritonconv.ops.shuffle import launch
    from tritonconv.ops.shuffle.spec import ShuffleConvSpec

    spec = ShuffleConvSpec(2, 240, 60, 4, 4, 3, 3, channels_last=True)
    assert launch._dense_input_grad(spec) and launch._dense_weight_grad(spec)
    for other in (replace(spec, channels_last=False), replace(spec, groups=1, in_channels=24),
                  replace(spec, shuffle_groups=1)):
        assert not launch._dense_input_grad(other)
    # an odd group width puts the unshuffled groups at unaligned channels: the grad input's window
    assert launch._dense_input_grad(ShuffleConvSpec(2, 96, 360, 4, 4, 8, 1, channels_last=True))
    assert not launch._dense_weight_grad(replace(spec, channels_last=False))
    # odd group widths gather dy in the grouped grad weight: the dense one loads vectors
    assert launch._dense_weight_grad(ShuffleConvSpec(2, 96, 360, 4, 4, 8, 1, channels_last=True))
    assert launch._dense_step(128, 3, 2) == 120
    assert launch._dense_step(64, 8, 2) == 64
    assert launch._dense_step(16, 3, 8) == 12


@pytest.mark.gpu
@pytest.mark.parametrize("in_c,out_c,groups", [(240, 60, 3), (384, 96, 8)])
def test_dense_backward_bfloat16_on_gpu(in_c, out_c, groups):
    """The packed select (a 32-bit AND of two bf16, GPU only) keeps a NaN in its group too."""
    from tritonconv.adapter import max_relative_error
    from tritonconv.ops.shuffle import launch, reference

    spec, x, dy, weight = _dense_case(in_c, out_c, groups, True, torch.bfloat16, bias=False)
    dy[1, out_c // 2, 2, 3] = float("nan")
    got = [launch.backward_input(dy, weight, spec, launch.default_tile(spec, "backward_input"), x, dense=True),
           launch.backward_weight(dy, x, spec, launch.default_tile(spec, "backward_weight"), dense=True)[0]]
    want = reference.fallback_backward(dy.double(), x.double(), weight.double(), spec, True, True)
    for a, b in zip(got, want):
        assert torch.equal(torch.isfinite(a), torch.isfinite(b))
        assert max_relative_error(a[torch.isfinite(a)].double(), b[torch.isfinite(b)]) < 3e-2


# (in, out, groups, shuffle groups): one-step reductions (a group's channels within BLOCK_K = 16), G = 3
# and G = 8, shuffled and not, odd group widths; 2 x 5 x 7 = 70 pixels, not a multiple of BLOCK_M = 16
# and 320 -> 320 in 20 groups, shuffled, whose dense product is too intense for the position forward
# 24 -> 216 in 3 groups: 72 filters a group, unshuffled, 16-byte aligned: the group-local forward with its
# stores' alignment promised (Y_ALIGN)
_ONE_STEP_SHAPES = [(9, 21, 3, 3), (24, 40, 8, 8), (96, 360, 8, 1), (15, 45, 3, 1), (12, 18, 1, 3), (16, 56, 8, 8),
                    (320, 320, 20, 20), (24, 216, 3, 1)]


@pytest.mark.parametrize("in_c,out_c,groups,shuffle_groups", _ONE_STEP_SHAPES)
@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
@pytest.mark.parametrize("multiprocessors", [1, 3], ids=["one-program", "several-programs"])
def test_one_step_forward_walks_pixel_tiles(in_c, out_c, groups, shuffle_groups, channels_last, multiprocessors,
                                            monkeypatch):
    """The one-step forward's programs walk several pixel tiles each (a partial last tile, several
    programs sharing the tiles unevenly), NCHW taking the dividing path and channels_last the flat one;
    shuffled in channels_last, the position forward walks them."""
    from tritonconv import tiles
    from tritonconv.adapter import max_relative_error
    from tritonconv.ops.shuffle import launch, reference

    spec, x, _, weight = _dense_case(in_c, out_c, groups, channels_last, torch.float64,
                                     shuffle_groups=shuffle_groups)
    bias = torch.randn(out_c, device=DEVICE, dtype=torch.float64)
    tile = GemmTile(16, 16, 16, 4, 1)
    assert launch._one_step_forward(spec, tile)
    assert launch._flat_int32_offsets(spec, x.stride(), x.stride()) == channels_last
    monkeypatch.setattr(tiles, "multiprocessor_count", lambda device: multiprocessors)
    grid, *_ = launch._forward_plan(spec, tile, x.stride(), x.stride(), True, multiprocessors)
    dense_intensity = in_c * out_c / (in_c + out_c)
    unaligned = shuffle_groups == 1 and groups > 1 and out_c // groups * 8 % 16 != 0  # float64 elements
    assert launch._position_forward(spec, x.stride()) == ((shuffle_groups > 1 or unaligned) and channels_last and (
        groups == 1 or dense_intensity <= launch.POSITION_INTENSITY))
    assert grid[0] < cdiv_pixels(spec, tile)  # each program walks more than one tile
    y = launch.forward(x, weight, bias, spec, tile)
    assert y.is_contiguous(memory_format=torch.channels_last) == channels_last
    want = reference.fallback_forward(x, weight, bias, spec)
    assert max_relative_error(y, want) < 1e-12


def cdiv_pixels(spec, tile):
    return -(-spec.batch * spec.height * spec.width // tile.block_rows)


# (in, out, groups, shuffle groups, tile): shuffled in channels_last, the forward's columns are output
# channels: blocks of 16 positions spanning all sg = G groups (odd widths, one step or two), one conv
# group shuffled (one step or three), groups that are not the shuffle's (2 conv groups, 4 shuffle
# blocks; 8 conv groups, 2 shuffle blocks: a block of 16 positions holds groups 0, 1, 4, 5, the span's
# 2 and 3 none), 32-column tiles; unshuffled groups of odd widths (their starts off the vectors: 5 filters a
# group, a block of 16 positions holding 4 groups; 45 a group, as ShuffleNet V1 g8's 96 -> 360)
_POSITION_SHAPES = [(15, 21, 3, 3, (16, 16, 16)), (24, 40, 8, 8, (16, 16, 16)), (96, 48, 3, 3, (16, 16, 16)),
                    (12, 18, 1, 3, (16, 16, 16)), (40, 18, 1, 3, (16, 16, 16)), (6, 8, 2, 4, (16, 16, 16)),
                    (32, 32, 8, 2, (16, 16, 16)),
                    (36, 60, 3, 3, (32, 32, 16)), (12, 15, 3, 1, (16, 16, 16)), (96, 360, 8, 1, (32, 32, 16))]


def _check_channels_last_forward(x, weight, bias, spec, tile):
    """The forward's channels_last output equals the float64 reference, and a NaN in one input channel
    (the first, middle, last) reaches exactly the outputs the reference makes non-finite: a group's
    product never multiplies another group's channels, not even by zero."""
    from tritonconv.adapter import max_relative_error
    from tritonconv.ops.shuffle import launch, reference

    y = launch.forward(x, weight, bias, spec, tile)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert max_relative_error(y, reference.fallback_forward(x, weight, bias, spec)) < 1e-12
    for channel in (0, spec.in_channels // 2, spec.in_channels - 1):
        poisoned = x.clone()
        poisoned[1, channel, 2, 3] = float("nan")
        got = launch.forward(poisoned, weight, bias, spec, tile)
        want = reference.fallback_forward(poisoned, weight, bias, spec)
        assert (~torch.isfinite(want)).any() and torch.equal(torch.isfinite(got), torch.isfinite(want))
        torch.testing.assert_close(got[torch.isfinite(got)], want[torch.isfinite(want)])


@pytest.mark.parametrize("in_c,out_c,groups,shuffle_groups,tile", _POSITION_SHAPES)
def test_position_forward(in_c, out_c, groups, shuffle_groups, tile):
    """The position forward equals the float64 reference, and a NaN in one input channel reaches
    exactly the outputs of its group's filters (the other groups' products are selected away, never
    multiplied by zero)."""
    from tritonconv.ops.shuffle import launch

    spec, x, _, weight = _dense_case(in_c, out_c, groups, True, torch.float64, shuffle_groups=shuffle_groups)
    bias = torch.randn(out_c, device=DEVICE, dtype=torch.float64)
    tile = GemmTile(*tile, 4, 1)
    assert launch._position_forward(spec, x.stride())
    _check_channels_last_forward(x, weight, bias, spec, tile)


@pytest.fixture
def without_position_forward(monkeypatch):
    """The position forward's bound at 0 (it then takes one-group layers only), the plans it made
    forgotten before and after: small test layers that the interleaved forward takes."""
    from tritonconv.ops.shuffle import launch

    launch._forward_plan.cache_clear()
    monkeypatch.setattr(launch, "POSITION_INTENSITY", 0)
    yield
    launch._forward_plan.cache_clear()


# (in, out, sg = G, tile): sg = 2, 4, 8; group widths under and over a block of 16 filters (17 a group: a
# second, one-filter block), 1-5 channels a group; a 64-column tile (16 filters of each of 4 groups)
_INTERLEAVED_SHAPES = [(8, 6, 2, (16, 16, 16)), (20, 36, 4, (16, 64, 16)), (24, 40, 8, (16, 16, 16)),
                       (64, 136, 8, (32, 128, 16)), (16, 64, 4, (16, 16, 16))]


@pytest.mark.parametrize("in_c,out_c,groups,tile", _INTERLEAVED_SHAPES)
@pytest.mark.usefixtures("without_position_forward")
def test_interleaved_forward(in_c, out_c, groups, tile):
    """The interleaved forward (every group's block of filters, joined into contiguous output rows)
    equals the float64 reference, and a NaN in one input channel reaches exactly the outputs of its
    group's filters."""
    from tritonconv.ops.shuffle import launch

    spec, x, _, weight = _dense_case(in_c, out_c, groups, True, torch.float64)
    bias = torch.randn(out_c, device=DEVICE, dtype=torch.float64)
    tile = GemmTile(*tile, 4, 1)
    assert launch._interleaved_forward(spec, x.stride()) and not launch._position_forward(spec, x.stride())
    assert launch._forward_plan(spec, tile, x.stride(), x.stride(), True, 1)[2]["INTERLEAVED"] == groups
    _check_channels_last_forward(x, weight, bias, spec, tile)


def test_interleaved_forward_is_taken_past_the_position_bound():
    """ShuffleNet V1 g8's three shuffled layers past the position forward's bound interleave; g3's (sg = 3,
    no join tree), NCHW outputs and shuffles whose blocks are not the conv groups do not."""
    from tritonconv.ops.shuffle import launch
    from tritonconv.ops.shuffle.spec import ShuffleConvSpec

    def taken(in_c, out_c, groups, shuffle_groups, channels_last=True):
        spec = ShuffleConvSpec(128, in_c, out_c, 14, 14, groups, shuffle_groups, channels_last=channels_last)
        tile = launch.default_tile(spec, "forward")
        y = torch.empty(spec.output_shape, device="meta").contiguous(
            memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        constexprs = launch._forward_plan(spec, tile, y.stride(), y.stride(), False, 132)[2]
        return bool(constexprs["INTERLEAVED"]), constexprs["POSITIONS"]

    for in_c, out_c in ((768, 192), (768, 384), (1536, 384)):
        assert taken(in_c, out_c, 8, 8) == (True, False)
    assert taken(384, 96, 8, 8) == (False, True)  # within the position bound
    assert taken(480, 240, 3, 3) == (False, False)
    assert taken(768, 384, 8, 8, channels_last=False) == (False, False)
    assert taken(768, 384, 8, 2) == (False, False)


@pytest.mark.parametrize("in_c,out_c,groups,shuffle_groups,channels_last,says", [
    (768, 384, 8, 8, True, "interleaved in registers"), (384, 96, 8, 8, True, "selected away"),
    (240, 480, 1, 3, True, "one conv group's filters in output order"),
    (480, 240, 3, 3, True, "every sg-th output channel"), (768, 384, 8, 8, False, "along the pixels (NCHW)"),
    (60, 240, 3, 1, True, "its own contiguous channels")])
def test_explain_names_the_forward_formulation(in_c, out_c, groups, shuffle_groups, channels_last, says):
    from tritonconv.ops.shuffle import op

    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(1, in_c, 2, 3, device=DEVICE).contiguous(memory_format=layout)
    weight = torch.randn(out_c, in_c // groups, 1, 1, device=DEVICE)
    decision = op.explain(x, weight, None, groups, shuffle_groups)
    assert decision.backend == "triton" and says in decision.reason
    assert "forward:" not in op.explain(x, weight, None, groups, shuffle_groups, pass_="backward").reason


def test_position_forward_on_one_pixel_nchw_images():
    """1 x 1 images in NCHW hold channels innermost too: the position forward takes them, with pixels
    addressed through their batch stride (not flat)."""
    from tritonconv.adapter import max_relative_error
    from tritonconv.ops.shuffle import launch, reference
    from tritonconv.ops.shuffle.spec import ShuffleConvSpec

    spec = ShuffleConvSpec(3, 15, 21, 1, 1, 3, 3, True, "float64", False)
    torch.manual_seed(0)
    x = torch.randn(spec.input_shape, device=DEVICE, dtype=torch.float64)
    weight = torch.randn(spec.weight_shape, device=DEVICE, dtype=torch.float64)
    bias = torch.randn(21, device=DEVICE, dtype=torch.float64)
    y_strides = torch.empty(spec.output_shape).stride()
    assert launch._position_forward(spec, y_strides)
    y = launch.forward(x, weight, bias, spec, GemmTile(16, 16, 16, 4, 1))
    assert max_relative_error(y, reference.fallback_forward(x, weight, bias, spec)) < 1e-12


def test_position_forward_is_taken_where_the_product_stays_memory_bound():
    from tritonconv.ops.shuffle import launch
    from tritonconv.ops.shuffle.spec import ShuffleConvSpec

    def spec(in_c, out_c, groups, shuffle_groups, channels_last=True):
        return ShuffleConvSpec(128, in_c, out_c, 14, 14, groups, shuffle_groups, channels_last=channels_last)

    assert launch._position_forward(spec(384, 192, 8, 8)) and launch._position_forward(spec(480, 120, 3, 3))
    assert launch._position_forward(spec(1536, 384, 1, 8))  # one conv group: no extra product
    assert not launch._position_forward(spec(1536, 384, 8, 8))  # 8 x its product: compute-bound
    assert launch._position_forward(spec(96, 360, 8, 1))  # unshuffled, 45 filters a group: off the vectors
    assert not launch._position_forward(spec(60, 216, 3, 1))  # 72 filters a group: 16-byte aligned groups
    assert not launch._position_forward(spec(96, 360, 8, 1, channels_last=False))
    assert not launch._position_forward(spec(384, 192, 8, 8, channels_last=False))  # NCHW: along pixels


def test_forward_store_alignment_promise():
    """Y_ALIGN, what the forward promises of y's pixel strides and of where its stored column blocks
    start: the 16-byte vector of an unshuffled 72-filter group (ShuffleNet V1 g3's 60 -> 216) and of
    output positions; nothing where groups land every sg-th channel or y is NCHW. It must divide what it
    promises (the kernels rewrite them as its multiples)."""
    from tritonconv.ops.shuffle import launch
    from tritonconv.ops.shuffle.spec import ShuffleConvSpec

    def y_align(in_c, out_c, groups, shuffle_groups, channels_last=True):
        spec = ShuffleConvSpec(128, in_c, out_c, 28, 28, groups, shuffle_groups, dtype="bfloat16",
                               channels_last=channels_last)
        y = torch.empty(spec.output_shape, device="meta").contiguous(
            memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        tile = launch.default_tile(spec, "forward")
        constexprs = launch._forward_plan(spec, tile, y.stride(), y.stride(), False, 132)[2]
        align, positions = constexprs["Y_ALIGN"], constexprs["POSITIONS"]
        batch, _, row, column = y.stride()
        block_starts = spec.out_channels if positions else spec.group_out
        assert batch % align == row % align == column % align == block_starts % align == 0
        return align, positions

    assert y_align(60, 216, 3, 1) == (8, False)  # 72 a group: the group-local stores, 16 bytes each
    assert y_align(96, 360, 8, 1) == (8, True)  # 45 a group: output positions
    assert y_align(60, 240, 3, 1) == (1, False)  # 80 a group, strides of 240: the JIT's own hints hold
    assert y_align(60, 216, 3, 1, channels_last=False) == (1, False)
    assert y_align(480, 240, 3, 3) == (1, False)  # shuffled past the position bound: every 3rd channel


@pytest.mark.parametrize("in_c,out_c,groups,shuffle_groups,channels_last", [
    (48, 24, 2, 1, True), (48, 24, 2, 1, False), (60, 36, 3, 3, False), (320, 320, 10, 10, True)])
def test_multi_step_group_forward(in_c, out_c, groups, shuffle_groups, channels_last):
    """The forward reducing a group's channels in several BLOCK_K steps, one pixel tile a program (the
    group-local path; shuffled stores in NCHW, and in channels_last where the dense product is too
    intense for the position forward): against the float64 reference."""
    from tritonconv.adapter import max_relative_error
    from tritonconv.ops.shuffle import launch, reference

    spec, x, _, weight = _dense_case(in_c, out_c, groups, channels_last, torch.float64,
                                     shuffle_groups=shuffle_groups)
    bias = torch.randn(out_c, device=DEVICE, dtype=torch.float64)
    tile = GemmTile(16, 16, 16, 4, 1)
    y_strides = torch.empty(spec.output_shape).contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format).stride()
    assert not launch._one_step_forward(spec, tile) and not launch._position_forward(spec, y_strides)
    y = launch.forward(x, weight, bias, spec, tile)
    assert max_relative_error(y, reference.fallback_forward(x, weight, bias, spec)) < 1e-12
