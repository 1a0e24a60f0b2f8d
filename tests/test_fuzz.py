"""Seeded random shapes and hyperparameters per layer: forward and every gradient against float64.

CI runs a few draws per layer; ``pytest -m fuzz`` runs many more (``TRITONCONV_FUZZ_DRAWS`` per layer,
default 40) before a release. A failure prints its seed, so it can be replayed.
"""

from __future__ import annotations

import os
import random

import pytest
import torch

from conftest import DEVICE
from layer_cases import CASES
from test_contract import check_gradients

FUZZED = [case for case in CASES if case.random_case is not None]
CI_DRAWS = 3


def run_draw(case, seed: int) -> None:
    rng = random.Random(f"{case.name}-{seed}")
    build, shape = case.random_case(rng)
    dtype = rng.choice([torch.float32, torch.float32, torch.float16])
    torch.manual_seed(seed)
    module = build(device=DEVICE, dtype=dtype).train(not case.has_batch_norm)
    for buffer in module.buffers():
        if buffer.dtype.is_floating_point:
            buffer.copy_(torch.rand_like(buffer) + 0.5)
    frozen = rng.choice(["none", "none", "first", "all"])
    params = list(module.parameters())
    for param in {"none": [], "first": params[:1], "all": params}[frozen]:
        param.requires_grad_(False)
    x = torch.randn(shape, device=DEVICE, dtype=dtype)
    layout = rng.choice(["contiguous", "channels_last", "channel_slice"])
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "channel_slice":
        x = torch.cat([x, x[:, :1]], 1)[:, :shape[1]]
    x.requires_grad_(frozen != "all" or rng.random() < 0.5)
    where = f"{case} seed={seed}: {module!r} on {tuple(shape)} {dtype} {layout}, frozen={frozen}"
    try:
        check_gradients(case, module, x, dtype=dtype)
    except AssertionError as error:
        raise AssertionError(f"{where}: {error}") from None


@pytest.mark.parametrize("case", FUZZED, ids=str)
@pytest.mark.parametrize("seed", range(CI_DRAWS))
def test_fuzz_draws(case, seed):
    run_draw(case, seed)


@pytest.mark.fuzz
@pytest.mark.parametrize("case", FUZZED, ids=str)
def test_fuzz_long(case):
    for seed in range(CI_DRAWS, CI_DRAWS + int(os.environ.get("TRITONCONV_FUZZ_DRAWS", "40"))):
        run_draw(case, seed)
