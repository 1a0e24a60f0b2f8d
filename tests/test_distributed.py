"""DistributedDataParallel over our layers (gloo, 2 processes on the CPU): a model whose first layer
is a HetConv2d without bias (its input needs no gradient) trains, and the ranks agree."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_step(rank: int, port: int, results) -> None:
    os.environ["TRITON_INTERPRET"] = "1"
    import tritonconv  # after the interpreter switch, as in conftest

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(0)
        model = torch.nn.Sequential(tritonconv.HetConv2d(4, 8, 3, p=2), torch.nn.ReLU(),
                                    tritonconv.ShiftConv2d(8, 8, 3), torch.nn.ReLU(),
                                    tritonconv.DepthwiseSeparableConv2d(8, 4, 3), tritonconv.DepthwiseConv2d(4, 3))
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        torch.manual_seed(100 + rank)  # each rank its own batch
        x = torch.randn(2, 4, 6, 6)
        with tritonconv.use_backend("triton"):
            ddp(x).square().mean().backward()
        # DDP's buckets take a gradient without a copy (or a stride warning) only in the parameter's strides.
        assert all(p.grad.stride() == p.stride() for p in model.parameters() if p.dim() == 4 and p.shape[1] == 1)
        results[rank] = [p.grad.clone() for p in model.parameters()]
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_processes_agree():
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_train_step, args=(_free_port(), results), nprocs=WORLD, join=True)
        grads = [results[rank] for rank in range(WORLD)]
    assert len(grads[0]) == len(grads[1]) > 0
    for a, b in zip(*grads):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b)  # all-reduced: the same on every rank
