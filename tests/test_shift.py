"""ShiftConv2d (SPEC section 3): Triton forward and gradients against the float64 published formulation."""

import pytest
import torch
import torch.nn.functional as F

from tritonconv.dispatch import use_backend
from tritonconv.ops.shift import ShiftConv2d, ShiftSpec, explain, reference
from tritonconv.ops.shift.adapter import ADAPTER
from tritonconv.ops.shift.spec import channel_shifts

from conftest import DEVICE


def _oracle(layer: ShiftConv2d, x: torch.Tensor) -> torch.Tensor:
    s = reference.shift(x, layer.kernel_size, layer.dilation, layer.assignment)
    return F.conv2d(s, layer.weight, layer.bias, layer.stride)


def _check(layer, x, tol=1e-10):
    """Forward and every gradient of ``layer`` at ``x`` against the oracle with the same parameters."""
    layer.zero_grad()
    x = x.detach().requires_grad_()
    y = layer(x)
    grad = torch.randn_like(y)
    y.backward(grad)
    ours = [x.grad] + [p.grad for p in layer.parameters()]
    x_ref = x.detach().clone().requires_grad_()
    layer.zero_grad()
    y_ref = _oracle(layer, x_ref)
    y_ref.backward(grad)
    torch.testing.assert_close(y, y_ref, atol=tol, rtol=tol)
    for got, want in zip(ours, [x_ref.grad] + [p.grad for p in layer.parameters()]):
        torch.testing.assert_close(got, want, atol=tol, rtol=tol)
    return y


@pytest.mark.parametrize("assignment", ["interleaved", "grouped"])
def test_shift_matches_the_definition(assignment):
    x = torch.randn(1, 11, 4, 5, dtype=torch.float64)
    s = reference.shift(x, 3, 1, assignment)
    for c, (dh, dw) in enumerate(channel_shifts(11, 3, 1, assignment)):
        for h in range(4):
            for w in range(5):
                inside = 0 <= h + dh < 4 and 0 <= w + dw < 5
                assert s[0, c, h, w] == (x[0, c, h + dh, w + dw] if inside else 0)


def test_assignments_differ_by_a_channel_permutation():
    inter, grouped = channel_shifts(20, 3, 1, "interleaved"), channel_shifts(20, 3, 1, "grouped")
    assert inter[:9] == grouped[0:18:2] and inter[18:] == grouped[18:] == [(0, 0), (0, 0)]
    assert sorted(inter) == sorted(grouped)


@pytest.mark.parametrize("in_c,out_c,h,w,k,dilation,stride,assignment,bias", [
    (20, 12, 7, 5, 3, 1, 1, "interleaved", True),   # remainder channels, H != W
    (20, 12, 7, 5, 3, 1, 1, "grouped", False),
    (19, 9, 6, 7, 3, 2, 2, "interleaved", True),    # dilation and stride together
    (30, 17, 5, 8, 5, 1, 2, "grouped", True),       # k = 5, odd filter count
    (5, 6, 4, 3, 3, 1, 1, "grouped", True),         # C < k^2: nothing is shifted
    (18, 5, 3, 4, 3, 3, 1, "interleaved", True),    # shift as large as the image
    # several reduction chunks of fewer than 16 channels per direction: each chunk's tile is assembled
    # from k^2 shifted loads, and chunks after the first start at channels c0 with c0 mod k^2 != 0
    (100, 12, 5, 6, 3, 1, 1, "interleaved", True),  # 4 chunks of 32, one unshifted channel
    (70, 9, 6, 5, 3, 2, 2, "grouped", False),       # 7 unshifted channels, dilation and stride
    # 16+ channels per direction: the forward reduces direction by direction (segmented)
    (147, 16, 4, 5, 3, 1, 1, "interleaved", True),  # remainder after 9 x 16 channels
    (147, 16, 5, 4, 3, 2, 2, "grouped", False),
    (288, 16, 3, 3, 3, 1, 1, "interleaved", True),  # 32 per direction, no remainder
])
def test_forward_and_gradients_float64(in_c, out_c, h, w, k, dilation, stride, assignment, bias):
    torch.manual_seed(0)
    layer = ShiftConv2d(in_c, out_c, k, dilation, stride, bias, assignment, device=DEVICE, dtype=torch.float64)
    y = _check(layer, torch.randn(2, in_c, h, w, device=DEVICE, dtype=torch.float64))
    assert y.shape == layer.spec((2, in_c, h, w)).output_shape


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float16, 5e-3)])
def test_low_precision_forward(dtype, tol):
    layer = ShiftConv2d(20, 16, device=DEVICE, dtype=dtype)
    x = torch.randn(2, 20, 6, 5, device=DEVICE, dtype=dtype)
    with torch.no_grad():
        want = _oracle(layer.double(), x.double())
        got = layer.to(dtype)(x)
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), want, atol=tol, rtol=tol)


def test_weight_written_through_data_is_seen_by_the_next_call():
    """The interleaved segmented forward reads the weight in reduction order, derived on every call."""
    layer = ShiftConv2d(144, 16, device=DEVICE, dtype=torch.float64)
    x = torch.randn(1, 144, 3, 4, device=DEVICE, dtype=torch.float64)
    with torch.no_grad():
        layer(x)
        layer.weight.data.mul_(-2.0)
        torch.testing.assert_close(layer(x), _oracle(layer, x))


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("assignment", ["interleaved", "grouped"])
def test_a_non_finite_value_reaches_only_the_outputs_that_read_it(assignment, layout):
    """The unsegmented forward reads every vector at several shifts: a value is kept only by its own
    channel's shift (a select, not a multiplication by zero), so an Inf stays where the maths puts it."""
    layer = ShiftConv2d(40, 6, assignment=assignment, device=DEVICE, dtype=torch.float64)
    x = torch.randn(1, 40, 5, 6, device=DEVICE, dtype=torch.float64)
    x[0, 13, 2, 3] = float("inf")
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        layer.weight.abs_()  # the Inf's outputs are +Inf, not Inf - Inf
        got, want = layer(x), _oracle(layer, x)
    assert torch.equal(torch.isinf(got), torch.isinf(want)) and torch.isinf(want).sum() == 6
    finite = torch.isfinite(want)
    torch.testing.assert_close(got[finite], want[finite])


def test_channels_last_and_non_contiguous_inputs():
    layer = ShiftConv2d(20, 8, stride=2, device=DEVICE, dtype=torch.float64)
    x = torch.randn(2, 20, 7, 6, device=DEVICE, dtype=torch.float64)
    y = _check(layer, x.contiguous(memory_format=torch.channels_last))
    assert y.is_contiguous(memory_format=torch.channels_last)
    _check(layer, torch.randn(2, 6, 7, 20, device=DEVICE, dtype=torch.float64).permute(0, 3, 2, 1))


@pytest.mark.parametrize("assignment", ["interleaved", "grouped"])
def test_channels_last_over_several_chunks(assignment):
    layer = ShiftConv2d(77, 10, stride=2, assignment=assignment, device=DEVICE, dtype=torch.float64)
    x = torch.randn(2, 77, 6, 5, device=DEVICE, dtype=torch.float64)
    y = _check(layer, x.contiguous(memory_format=torch.channels_last))
    assert y.is_contiguous(memory_format=torch.channels_last)


def test_triton_and_fallback_agree():
    layer = ShiftConv2d(19, 8, dilation=2, assignment="grouped", device=DEVICE, dtype=torch.float64)
    x = torch.randn(2, 19, 5, 6, device=DEVICE, dtype=torch.float64, requires_grad=True)
    results = []
    for backend in ("triton", "fallback"):
        x.grad = None
        layer.zero_grad()
        with use_backend(backend):
            y = layer(x)
            y.backward(torch.ones_like(y))
        results.append((y.detach(), x.grad, layer.weight.grad, layer.bias.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)
    assert explain(x, layer.weight, layer.bias, pass_="backward").backend == "triton"


def test_batch_zero():
    layer = ShiftConv2d(9, 4, device=DEVICE)
    x = torch.randn(0, 9, 5, 5, device=DEVICE, requires_grad=True)
    y = layer(x)
    assert y.shape == (0, 4, 5, 5)
    y.sum().backward()
    assert x.grad.shape == x.shape and layer.weight.grad.abs().sum() == 0


@pytest.mark.parametrize("make,error,words", [
    (lambda: ShiftConv2d(8, 4, kernel_size=4), ValueError, "kernel_size=4"),
    (lambda: ShiftConv2d(8, 4, assignment="random"), ValueError, "assignment='random'"),
    (lambda: ShiftConv2d(8, 4, dilation=0), ValueError, "dilation=0"),
    (lambda: ShiftConv2d(0, 4), ValueError, "in_channels=0"),
    (lambda: ShiftConv2d(8, 4)(torch.randn(8, 5, 5)), ValueError, "input must have 4 dimensions"),
    (lambda: ShiftConv2d(8, 4)(torch.randn(1, 7, 5, 5)), ValueError,
     "input has 7 channels (shape (1, 7, 5, 5)); expected in_channels=8"),
    (lambda: ShiftConv2d(8, 4)(torch.ones(1, 8, 5, 5, dtype=torch.int64)), TypeError, "dtype int64"),
    (lambda: ShiftConv2d(8, 4)(torch.randn(1, 8, 5, 5, dtype=torch.float64)), TypeError, "must match"),
    (lambda: ShiftConv2d(8, 4)("x"), TypeError, "torch.Tensor"),
])
def test_bad_input_is_refused_clearly(make, error, words):
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        make()


def test_spec_cost_is_a_pointwise_conv():
    spec = ShiftSpec(2, 18, 10, 8, 6, stride=2)
    assert spec.cost().macs == 2 * 4 * 3 * 18 * 10
    assert spec.dense_cost().macs == 9 * spec.cost().macs
    # the dilation only moves addresses; the assignment picks other kernel code (the GROUPED path)
    assert spec.tuning_key() == ShiftSpec(2, 18, 10, 8, 6, dilation=2, stride=2).tuning_key()
    assert spec.tuning_key() != ShiftSpec(2, 18, 10, 8, 6, stride=2, assignment="grouped").tuning_key()


def test_torch_compile_fullgraph_forward_and_backward():
    torch._dynamo.reset()
    layer = ShiftConv2d(10, 6, device=DEVICE, dtype=torch.float64)
    compiled = torch.compile(layer, fullgraph=True,
                             backend="aot_eager" if DEVICE.type == "cpu" else "inductor")
    _check(layer, torch.randn(1, 10, 4, 5, device=DEVICE, dtype=torch.float64))
    x = torch.randn(1, 10, 4, 5, device=DEVICE, dtype=torch.float64, requires_grad=True)
    y = compiled(x)
    y.sum().backward()
    torch.testing.assert_close(y, _oracle(layer, x))
    assert x.grad is not None and x.grad.shape == x.shape


def test_opcheck():
    layer = ShiftConv2d(10, 6, device=DEVICE, dtype=torch.float64)
    x = torch.randn(1, 10, 4, 5, device=DEVICE, dtype=torch.float64, requires_grad=True)
    args = (x, layer.weight, layer.bias, [3, 2, 2], "grouped")
    torch.library.opcheck(torch.ops.tritonconv.shift_conv2d.default, args,
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def test_adapter_shape_sets_and_shrunk_kernels():
    from tritonconv.adapter import max_relative_error
    specs = ADAPTER.specs_for("shiftresnet20", batch=2, dtype="float32")
    assert [spec.in_channels for _, _, spec in specs][:2] == [16, 16]
    _, _, spec = ADAPTER.specs_for("resnet50", batch=4, dtype="float32")[-1]
    work = ADAPTER.make_workload(ADAPTER.shrink(spec), DEVICE)
    for kernel in ("forward", "backward_input", "backward_weight"):
        tile = ADAPTER.candidate_tiles(work.spec, kernel)[0]
        assert max_relative_error(ADAPTER.triton(kernel, work, tile)(), ADAPTER.expected(kernel, work)) < 1e-4


@pytest.mark.parametrize("in_c,stride,dilation,assignment,layout", [
    (20, 2, 1, "interleaved", "nchw"),       # per-direction passes, neither tensor's pixels flat
    (20, 2, 1, "grouped", "channels_last"),  # dy flat, x at the stride
    (147, 2, 1, "interleaved", "nchw"),      # segmented: one shift per program, a remainder tile
    (147, 2, 2, "grouped", "channels_last"),
    (147, 1, 1, "interleaved", "nchw"),      # stride 1 with batch > 1 in NCHW: not flat either
    (20, 1, 1, "grouped", "channels_last"),  # both flat
])
@pytest.mark.parametrize("block_pixels", [16, 32])  # less than an image's 30 pixels per step, and more
def test_weight_gradient_pixel_walk_over_splits(in_c, stride, dilation, assignment, layout, block_pixels):
    """The grad-weight pixel walk: odd H and W, three images, three splits that start inside an image,
    steps shorter and longer than an image; x and dy in the same layout (as the layer passes them)."""
    from tritonconv.ops.shift import launch
    from tritonconv.tiles import GemmTile, multiprocessor_count

    torch.manual_seed(0)
    height, width = (11, 9) if stride == 2 else (6, 5)  # 30 output pixels per image either way
    spec = ShiftSpec(3, in_c, 16, height, width, stride=stride, dilation=dilation, assignment=assignment,
                     dtype="float64", channels_last=layout == "channels_last")
    memory_format = torch.channels_last if spec.channels_last else torch.contiguous_format
    x = torch.randn(spec.input_shape, device=DEVICE, dtype=torch.float64).contiguous(memory_format=memory_format)
    dy = torch.randn(spec.output_shape, device=DEVICE, dtype=torch.float64).contiguous(memory_format=memory_format)
    tile = GemmTile(16, 16, block_pixels, splits=3)
    dw, db = launch.backward_weight(dy, x, spec, tile)
    (splits, _), *_ = launch._backward_weight_plan(spec, tile, x.stride(), dy.stride(), x.device,
                                                    multiprocessor_count(x.device))
    assert splits == 3
    shifted = reference.shift(x, spec.kernel_size, dilation, assignment)[:, :, ::stride, ::stride]
    torch.testing.assert_close(dw.reshape(16, in_c), torch.einsum("bnhw,bchw->nc", dy, shifted))
    torch.testing.assert_close(db, dy.sum((0, 2, 3)))


@pytest.mark.parametrize("in_c,out_c,stride,dilation,assignment,layout,tile,multiprocessors", [
    # transposed product (64+ filters), 4 chunks, 2 filter tiles (the second masked), 16-pixel tiles
    # shorter than an image's 30 pixels, each of 2 programs walking 8 or 9 tiles
    (100, 70, 1, 1, "interleaved", "channels_last", (16, 64, 32), 1),
    # 2 chunks of 64, fewer than 64 filters (pixel rows), 8 programs per filter tile
    (100, 12, 2, 2, "grouped", "nchw", (16, 16, 64), 2),
    # 64-pixel tiles spanning several images (a carry into the batch index per step), 2 chunks of 16
    (20, 64, 2, 1, "grouped", "channels_last", (64, 64, 16), 1),
    (20, 64, 1, 2, "interleaved", "nchw", (64, 64, 16), 1),
])
def test_unrolled_forward_walks_pixel_tiles(monkeypatch, in_c, out_c, stride, dilation, assignment, layout, tile,
                                            multiprocessors):
    """The unrolled forward (fewer than 16 channels per direction) at tiles the default does not take:
    its programs walk several pixel tiles each, by carries, over odd images and a batch of nine."""
    from tritonconv import tiles
    from tritonconv.ops.shift import launch
    from tritonconv.tiles import GemmTile

    monkeypatch.setattr(tiles, "multiprocessor_count", lambda device: multiprocessors)
    torch.manual_seed(0)
    height, width = (11, 9) if stride == 2 else (6, 5)  # 30 output pixels per image either way
    spec = ShiftSpec(9, in_c, out_c, height, width, stride=stride, dilation=dilation, assignment=assignment,
                     dtype="float64", channels_last=layout == "channels_last")
    memory_format = torch.channels_last if spec.channels_last else torch.contiguous_format
    x = torch.randn(spec.input_shape, device=DEVICE, dtype=torch.float64).contiguous(memory_format=memory_format)
    weight = torch.randn(out_c, in_c, 1, 1, device=DEVICE, dtype=torch.float64)
    bias = torch.randn(out_c, device=DEVICE, dtype=torch.float64)
    kernel, (programs, _), *_ = launch._forward_plan(spec, GemmTile(*tile), x.stride(), x.stride(), True,
                                                      multiprocessors)
    assert kernel is launch.kernels.shift_fwd_unrolled_kernel
    assert programs < launch.cdiv(9 * 30, tile[0])  # some program walks more than one tile
    y = launch.forward(x, weight, bias, spec, GemmTile(*tile))
    want = F.conv2d(reference.shift(x, spec.kernel_size, dilation, assignment), weight, bias, stride)
    torch.testing.assert_close(y, want)


def test_unrolled_forward_tiles():
    """The unrolled forward's candidates run on one stage and include its default; a chunk wider than
    its vector tree (a tile from elsewhere, e.g. an edited cache) is narrowed, not a compile error."""
    from tritonconv.ops.shift import launch
    from tritonconv.tiles import GemmTile

    spec = ShiftSpec(2, 100, 24, 5, 4, kernel_size=5, dtype="float64", channels_last=True)
    assert not launch.segmented(spec)
    found = launch.candidate_tiles(spec, "forward")
    assert found[0] == launch.default_tile(spec, "forward") and {t.num_stages for t in found} == {1}
    torch.manual_seed(0)
    x = torch.randn(spec.input_shape, device=DEVICE, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(24, 100, 1, 1, device=DEVICE, dtype=torch.float64)
    y = launch.forward(x, weight, None, spec, GemmTile(16, 16, 256, 4, 1))
    torch.testing.assert_close(y, F.conv2d(reference.shift(x, 5, 1, "interleaved"), weight))


@pytest.mark.parametrize("strides,promise", [
    ((7 * 5 * 100, 1, 5 * 100, 100), 4),   # channels_last, 100 channels: 8-byte vectors of bf16
    ((7 * 5 * 24, 1, 5 * 24, 24), 8),      # 24 channels: 16 bytes, a promise the JIT cannot make
    ((7 * 5 * 64, 1, 5 * 64, 64), 1),      # multiples of 16: the JIT's own hint, no promise
    ((13 * 7 * 5, 7 * 5, 5, 1), 1),        # NCHW: columns contiguous, nothing to promise
])
def test_unrolled_forward_alignment_promise(strides, promise):
    """The power of two the unrolled forward (and the shuffle's) may assume of x's and y's pixel strides
    divides them."""
    from tritonconv._layout import pixel_stride_align

    assert pixel_stride_align(strides) == promise


@pytest.mark.gpu
def test_bfloat16_on_gpu():
    layer = ShiftConv2d(64, 64, stride=2, device=DEVICE, dtype=torch.bfloat16)
    x = torch.randn(4, 64, 28, 28, device=DEVICE, dtype=torch.bfloat16)
    with torch.no_grad():
        got = layer(x).double()
        want = _oracle(layer.double(), x.double())
    assert (got - want).norm() / want.norm() < 3e-2
