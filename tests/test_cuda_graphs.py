"""A training step of every layer captured in a CUDA graph (``torch.cuda.graph``) and a model of our
layers under ``torch.compile(mode="reduce-overhead")`` (CUDA graph trees): replays on new inputs give
what eager calls give. GPU tier: capture needs a GPU."""

import copy

import pytest
import torch
from torch import nn

import tritonconv
from tritonconv.adapter import relative_error

from layer_cases import CASES

DTYPE = torch.bfloat16
TOLERANCE = 1e-2  # the same kernels and tiles replayed: only the eager run's own rounding may differ


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def _training_step(module: nn.Module, x: torch.Tensor):
    out = module(x)
    wrt = [x, *(p for p in module.parameters() if p.requires_grad)]
    return out, torch.autograd.grad(out.float().square().mean(), wrt, allow_unused=True)


def _assert_same(replayed, eager, what: str) -> None:
    for i, (a, b) in enumerate(zip(replayed, eager)):
        if a is None or b is None:
            assert a is None and b is None, f"{what} #{i}: a gradient only one of the runs has"
            continue
        assert torch.isfinite(a).all(), f"{what} #{i}: non-finite values"
        assert relative_error(a, b) < TOLERANCE, f"{what} #{i}: relative error {relative_error(a, b):.3g}"


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES, ids=str)
def test_a_training_step_replays_from_a_cuda_graph(case):
    torch.manual_seed(0)
    module = case.build(device="cuda", dtype=DTYPE).to(memory_format=torch.channels_last).eval()
    static_x = _channels_last(torch.randn(case.input_shape, device="cuda", dtype=DTYPE)).requires_grad_()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture stream: compilation, caches, autograd state
        for _ in range(3):
            _training_step(module, static_x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out, static_grads = _training_step(module, static_x)
    for seed in (1, 2):  # new data in the captured input: a replay that read stale buffers would differ
        torch.manual_seed(seed)
        with torch.no_grad():
            static_x.copy_(torch.randn_like(static_x))
        graph.replay()
        torch.cuda.synchronize()
        eager_out, eager_grads = _training_step(module, static_x)
        _assert_same((static_out, *static_grads), (eager_out, *eager_grads), f"{case} replay {seed}")


@pytest.mark.gpu
def test_a_model_of_our_layers_compiles_with_reduce_overhead():
    torch.manual_seed(0)
    model = nn.Sequential(tritonconv.HetConv2d(16, 32, 3, p=4), nn.ReLU(),
                          tritonconv.DepthwiseSeparableConv2d(32, 32, 3, activation="relu"),
                          tritonconv.ShiftConv2d(32, 32, 3), nn.ReLU(),
                          tritonconv.VersatileConv2d(32, 32, 3, delta=2, g=2),
                          tritonconv.ShuffledGroupConv2d(32, 48, 4, 4), nn.ReLU(),
                          tritonconv.DepthwiseConv2d(48, 3)).to("cuda", DTYPE).to(memory_format=torch.channels_last)
    eager = copy.deepcopy(model)
    compiled = torch.compile(model, mode="reduce-overhead", fullgraph=True)
    for seed in range(4):  # the first calls record the graphs, the later ones replay them
        torch.manual_seed(seed)
        x = _channels_last(torch.randn(8, 16, 20, 20, device="cuda", dtype=DTYPE))
        out, grads = _training_step(compiled, x.clone().requires_grad_())
        expected, expected_grads = _training_step(eager, x.clone().requires_grad_())
        _assert_same((out, *grads), (expected, *expected_grads), f"reduce-overhead call {seed}")
