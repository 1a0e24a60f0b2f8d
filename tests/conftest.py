"""Test set-up: kernels run through Triton's interpreter unless a GPU is present.

TRITON_INTERPRET must be set before any module defining a @triton.jit kernel is imported, so it is
set here, at the top of the first file pytest loads.
"""

import os
import warnings

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


@pytest.fixture
def device():
    return DEVICE


def poisoned_empty(*shape, **kwargs):
    """A fresh tensor full of NaN, so an output element the kernel forgot to write fails loudly."""
    return torch.full(shape, float("nan"), **kwargs)


@pytest.fixture
def every_warning(recwarn):
    """``recwarn`` without the "default" filter it installs for RuntimeWarning, which shows a message once
    per code line: with it a test could not tell our once-per-file-version reporting from Python's."""
    warnings.simplefilter("always", RuntimeWarning)
    return recwarn
