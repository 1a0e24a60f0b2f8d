"""Test set-up: kernels run through Triton's interpreter unless a GPU is present.

TRITON_INTERPRET must be set before any module defining a @triton.jit kernel is imported, so it is
set here, at the top of the first file pytest loads.
"""

import os

import torch

ON_GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") in ("", "0")
if not ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

DEVICE = torch.device("cuda") if ON_GPU else torch.device("cpu")


def pytest_collection_modifyitems(config, items):
    if ON_GPU:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path, monkeypatch):
    """Each test gets its own empty tuning cache and no forced backend."""
    monkeypatch.setenv("TRITONCONV_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("TRITONCONV_BACKEND", raising=False)
    yield


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    """Every buffer the library allocates for a kernel to write starts as NaN (one patch, at
    ``tritonconv._layout.empty``): an output element or split-K partial left unwritten fails loudly."""
    from tritonconv import _layout

    def nan_empty(shape, *, device, dtype, memory_format):
        buffer = torch.empty(shape, device=device, dtype=dtype, memory_format=memory_format)
        return buffer.fill_(float("nan")) if buffer.is_floating_point() else buffer

    monkeypatch.setattr(_layout, "_allocate", nan_empty)


@pytest.fixture
def device():
    return DEVICE


def poisoned_empty(*shape, **kwargs):
    """A fresh tensor full of NaN, so an output element the kernel forgot to write fails loudly."""
    return torch.full(shape, float("nan"), **kwargs)
