"""Valid calls our kernels cannot take go to the fallback, with the reason in explain(); forcing
triton on them says why it cannot. Only what no backend can compute is a ValueError."""

import copy

import pytest
import torch

import tritonconv
from tritonconv import BackendUnavailable
from tritonconv.adapter import relative_error

from conftest import DEVICE

CASES = [
    ("hetconv stride 3", lambda: tritonconv.HetConv2d(8, 8, 3, stride=3, p=4, bias=True), (2, 8, 7, 8), "stride=3"),
    ("versatile k=9", lambda: tritonconv.VersatileConv2d(4, 10, 9, delta=0), (1, 4, 10, 9), "kernel_size=9"),
    ("depthwise stride 3", lambda: tritonconv.DepthwiseConv2d(4, 3, stride=3, multiplier=2), (2, 4, 9, 8),
     "stride=3"),
    ("dwsep stride 3", lambda: tritonconv.DepthwiseSeparableConv2d(4, 6, 3, stride=3, activation="relu"),
     (2, 4, 9, 8), "stride=3"),
]


@pytest.mark.parametrize("name, build, shape, words", CASES, ids=[c[0] for c in CASES])
def test_unsupported_calls_go_to_the_fallback(name, build, shape, words):
    torch.manual_seed(0)
    layer = build().to(DEVICE)
    x = torch.randn(shape, device=DEVICE, requires_grad=True)
    for pass_ in ("forward", "backward"):
        decision = layer.explain(x, pass_)
        assert decision.backend == "fallback" and words in decision.reason, decision
    reference = copy.deepcopy(layer).double()
    x64 = x.detach().double().requires_grad_(True)
    y, y64 = layer(x), reference(x64)
    y.square().sum().backward()
    y64.square().sum().backward()
    assert relative_error(y, y64) < 1e-5
    assert relative_error(x.grad, x64.grad) < 1e-5
    for p, p64 in zip(layer.parameters(), reference.parameters()):
        assert relative_error(p.grad, p64.grad) < 1e-5
    with pytest.raises(BackendUnavailable, match=f"cannot take it: {words}"):
        with tritonconv.use_backend("triton"):
            layer(x)


def test_images_past_int32_go_to_the_fallback_with_the_reason():
    """The kernels address inside an image in int32: a larger image is the fallback's, and says so
    (the launchers used to take the reference path silently). Specs cost nothing: no tensor is made."""
    from tritonconv import dispatch
    from tritonconv.ops.hetconv import OPERATOR, HetConvSpec

    big = HetConvSpec(2, 64, 64, 6000, 6000, 3, 1, 4, False, "float32")  # 64 * 6000^2 = 2.3e9 per image
    small = HetConvSpec(2, 64, 64, 5000, 5000, 3, 1, 4, False, "float32")  # 1.6e9
    decision = dispatch.decide(OPERATOR, big, "forward", torch.device("cpu"))
    assert decision.backend == "fallback" and "past 2^31" in decision.reason
    assert dispatch.decide(OPERATOR, small, "forward", torch.device("cpu")).backend == "triton"


@pytest.mark.parametrize("layer", ["shift", "versatile", "shuffle", "depthwise", "ghost", "dwsep"])
def test_images_past_int32_go_to_the_fallback(layer):
    """Every kernel addresses inside an image in int32 (the shift grad weight's pixel walk included); a
    Ghost module's output image holds its input's channels too."""
    from tritonconv import dispatch
    from tritonconv.ops.depthwise import OPERATOR as DEPTHWISE
    from tritonconv.ops.depthwise import DepthwiseSpec
    from tritonconv.ops.dwsep.op import OPERATOR as DWSEP
    from tritonconv.ops.dwsep.spec import DwSepSpec
    from tritonconv.ops.shift import OPERATOR as SHIFT
    from tritonconv.ops.shift import ShiftSpec
    from tritonconv.ops.shuffle import OPERATOR as SHUFFLE
    from tritonconv.ops.shuffle import ShuffleConvSpec
    from tritonconv.ops.versatile import OPERATOR as VERSATILE
    from tritonconv.ops.versatile import VersatileSpec

    operator, make = {"shift": (SHIFT, lambda size: ShiftSpec(2, 64, 64, size, size)),
                      "versatile": (VERSATILE, lambda size: VersatileSpec(2, 64, 63, size, size)),
                      "shuffle": (SHUFFLE, lambda size: ShuffleConvSpec(2, 64, 64, size, size, 2, 2)),
                      "depthwise": (DEPTHWISE, lambda size: DepthwiseSpec(2, 64, 64, size, size)),
                      "ghost": (DEPTHWISE, lambda size: DepthwiseSpec(2, 32, 32, size, size, concat_input=True)),
                      "dwsep": (DWSEP, lambda size: DwSepSpec(2, 64, 64, size, size))}[layer]
    decision = dispatch.decide(operator, make(6000), "forward", torch.device("cpu"))  # 2.3e9 per image
    assert decision.backend == "fallback" and "past 2^31" in decision.reason
    assert dispatch.decide(operator, make(5000), "forward", torch.device("cpu")).backend == "triton"


def test_fused_dwsep_depthwise_output_past_int32_goes_to_the_fallback():
    """The backward's intermediate (the depthwise output, [B, C, Ho, Wo]) may pass 2^31 elements per image
    where the input and the output do not (padding grows it)."""
    from tritonconv import dispatch
    from tritonconv.ops.dwsep.op import OPERATOR
    from tritonconv.ops.dwsep.spec import DwSepSpec

    spec = DwSepSpec(1, 64, 8, 5790, 5790, padding=3)  # 64 * 5794^2 > 2^31 > 64 * 5790^2
    decision = dispatch.decide(OPERATOR, spec, "backward", torch.device("cpu"))
    assert decision.backend == "fallback" and "depthwise output" in decision.reason, decision


def test_depthwise_batch_past_the_grid_goes_to_the_fallback_with_the_reason():
    from tritonconv import dispatch
    from tritonconv.ops.depthwise import OPERATOR, DepthwiseSpec

    decision = dispatch.decide(OPERATOR, DepthwiseSpec(65536, 8, 8, 4, 4), "forward", torch.device("cpu"))
    assert decision.backend == "fallback" and "batch=65536" in decision.reason
    assert OPERATOR.triton_unsupported(DepthwiseSpec(65535, 8, 8, 4, 4)) is None


def test_fused_dwsep_past_int32_pixels_goes_to_the_fallback_with_the_reason():
    from tritonconv import dispatch
    from tritonconv.ops.dwsep.op import OPERATOR
    from tritonconv.ops.dwsep.spec import DwSepSpec

    big = DwSepSpec(2**31 // (112 * 112) + 1, 32, 16, 112, 112, dtype="bfloat16", channels_last=True)
    decision = dispatch.explain(OPERATOR, big, "forward", torch.device("cuda"))
    assert decision.backend == "fallback" and "int32" in decision.reason, decision
    assert OPERATOR.triton_unsupported(DwSepSpec(128, 32, 16, 112, 112)) is None


def test_views_spanning_2_to_the_31_inside_an_image_are_compacted():
    """A channel slice of a much wider tensor fits the spec's check but its strides span past 2^31 inside
    one image: every launcher reads it through a compact copy (meta tensors: nothing is allocated)."""
    from tritonconv._layout import int32_addressable

    wide = torch.empty(2, 40000, 256, 256, device="meta").contiguous(memory_format=torch.channels_last)
    view = wide[:, :16]  # 16 * 256 * 256 elements, strides of 40000 channels
    compact = int32_addressable(view)
    assert compact is not view and compact.is_contiguous(memory_format=torch.channels_last)
    small = wide[:1, :16, :8, :8]
    assert int32_addressable(small) is small
