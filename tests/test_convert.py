"""tritonconv.convert: swapping nn.Conv2d modules of a model for compact layers, and its report."""

import pytest
import torch
from torch import nn

from tritonconv import HetConv2d, count_macs, use_backend
from tritonconv.convert import convert
from tritonconv.ops.linearconv import LinearConv2d
from tritonconv.ops.rotflip import RotFlipConv2d

# VGG-11 for CIFAR: convs with bias, each followed by BatchNorm2d and ReLU, then Linear(512, 10).
VGG11_CONFIG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


def vgg11_cifar() -> nn.Sequential:
    layers, channels = [], 3
    for item in VGG11_CONFIG:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(channels, item, 3, padding=1), nn.BatchNorm2d(item), nn.ReLU(inplace=True)]
            channels = item
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(512, 10))


def small_model() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU()),
        nn.Conv2d(16, 16, 1),
        nn.Conv2d(16, 16, 3, padding=1, groups=2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4),
    )


def parameter_count(model):
    return sum(t.numel() for t in model.parameters())


def test_vgg11_parameters_halve_with_linearconv():
    model = vgg11_cifar()
    assert parameter_count(model) == 9_231_114
    report = convert(model, to=LinearConv2d)
    assert len(report.converted) == 8 and not report.skipped
    assert parameter_count(model) == report.params_after == 4_922_282
    assert report.params_before == 9_231_114


def test_convert_swaps_exactly_the_selected_convs_and_keeps_the_rest():
    torch.manual_seed(0)
    model = small_model()
    before = dict(model.named_modules())
    x = torch.randn(2, 3, 8, 8)
    with use_backend("fallback"):
        expected_shape = model(x).shape
    report = convert(model, to=LinearConv2d, filter_fn=lambda name, conv: conv.kernel_size == (3, 3),
                     input_shape=(2, 3, 8, 8))
    assert [layer.name for layer in report.converted] == ["0", "3.0", "5"]
    assert [(layer.name, layer.reason) for layer in report.skipped] == [("4", "not selected by filter_fn")]
    assert isinstance(model[0], LinearConv2d) and isinstance(model[3][0], LinearConv2d)
    assert model[5].groups == 2 and isinstance(model[5], LinearConv2d)
    assert model[4] is before["4"] and model[1] is before["1"] and model[8] is before["8"]
    with use_backend("fallback"):
        assert model(x).shape == expected_shape
    # per-layer numbers and the whole model's
    first = report.converted[0]
    assert first.params_before == 3 * 8 * 9 + 8 and first.params_after == 4 * 3 * 9 + 4 * 4 + 8
    assert first.macs_before == first.macs_after == 2 * 64 * 8 * 27  # the dense conv's work, once W is built
    assert report.macs_after == count_macs(model, (2, 3, 8, 8)) == report.macs_before
    assert report.params_after == parameter_count(model) < report.params_before
    text = str(report)
    assert "re-parameterisation" in text and "3.0" in text and "not selected by filter_fn" in text


def test_unconvertible_convs_are_skipped_with_a_reason():
    model = small_model()
    report = convert(model, to=RotFlipConv2d)
    reasons = {layer.name: layer.reason for layer in report.skipped}
    assert [layer.name for layer in report.converted] == ["0", "3.0", "4"]
    assert "groups=2" in reasons["5"]
    assert isinstance(model[5], nn.Conv2d)

    model = small_model()
    model[4] = nn.Conv2d(16, 16, 3, padding=0)
    model[5] = nn.Conv2d(16, 16, 3, padding=2, dilation=2)
    report = convert(model, to=HetConv2d, p=2)
    reasons = {layer.name: layer.reason for layer in report.skipped}
    assert isinstance(model[0], nn.Conv2d) and "p=2 must divide both in_channels=3" in reasons["0"]
    assert isinstance(model[3][0], HetConv2d) and model[3][0].p == 2
    assert "padding" in reasons["4"] and "dilation" in reasons["5"]


def test_shared_conv_becomes_one_shared_layer_and_training_mode_is_kept():
    conv = nn.Conv2d(4, 4, 3, padding=1)
    model = nn.Sequential(conv, nn.ReLU(), conv).eval()
    report = convert(model, to=LinearConv2d, variant="lowrank", rank=1)
    assert len(report.converted) == 1
    assert model[0] is model[2] and isinstance(model[0], LinearConv2d) and not model[0].training
    assert model[0].variant == "lowrank"


def test_bad_arguments():
    with pytest.raises(TypeError, match="to=.* must be a layer class with a from_conv2d"):
        convert(small_model(), to=nn.Linear)
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        convert("vgg", to=LinearConv2d)
    with pytest.raises(TypeError, match="filter_fn must be callable"):
        convert(small_model(), to=LinearConv2d, filter_fn=3)
    with pytest.raises(TypeError, match="unexpected keyword argument 'rnak'"):  # a typo is not a skip
        convert(small_model(), to=LinearConv2d, rnak=2)
