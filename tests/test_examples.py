"""examples/train_vgg16_hetconv.py runs and learns, at a tiny width on the CPU."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch

import tritonconv

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_vgg16_hetconv.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("train_vgg16_hetconv", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_loss_goes_down(example):
    # The cuDNN formulation of HetConv: a VGG-16 step through the interpreter takes about a minute.
    # 60 steps (about a second): over 20 the loss falls about 0.2, and on one machine 0.18, short of a
    # 0.2 margin; over 60 it falls from about 2.3 to about 1
    losses = example.main(["--steps", "60", "--width", "0.125", "--batch-size", "16", "--backend", "fallback",
                           "--device", "cpu"])
    assert len(losses) == 60 and all(math.isfinite(loss) for loss in losses)
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.5


def test_compiled_training_runs(example):
    losses = example.main(["--steps", "2", "--width", "0.125", "--batch-size", "4", "--backend", "fallback",
                           "--device", "cpu", "--compile"])
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)


def test_width_one_is_the_library_model(example):
    assert str(example.vgg16(4, 1.0)) == str(tritonconv.models.vgg16_cifar(p=4))
    tiny = example.vgg16(4, 0.125)
    convs = [m for m in tiny if isinstance(m, tritonconv.HetConv2d)]
    assert len(convs) == 12 and convs[0].in_channels == 8 and convs[-1].out_channels == 64
    with tritonconv.use_backend("fallback"):
        assert tiny(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.slow
def test_one_step_through_the_triton_kernels(example):
    """The smallest run on the Triton kernels themselves (about 25 s under the interpreter)."""
    losses = example.main(["--steps", "1", "--width", "0.0625", "--batch-size", "2", "--backend", "triton",
                           "--device", "cpu"])
    assert len(losses) == 1 and math.isfinite(losses[0])


def test_bad_arguments(example):
    with pytest.raises(SystemExit):
        example.parse_args(["--width", "2"])
    with pytest.raises(SystemExit):
        example.parse_args(["--batch-size", "1"])
