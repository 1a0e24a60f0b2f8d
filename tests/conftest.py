"""Test set-up: kernels run through Triton's interpreter unless a GPU is present.

TRITON_INTERPRET must be set before any module defining a @triton.jit kernel is imported, so it is
set here, at the top of the first file pytest loads.
"""

import errno
import io
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


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    """Every buffer the library allocates for a kernel to write starts as NaN (one patch, at
    ``tritonconv._layout.allocate``): an output element or split-K partial left unwritten fails loudly."""
    from tritonconv import _layout

    def nan_empty(shape, strides, *, device, dtype):
        buffer = torch.empty_strided(shape, strides, device=device, dtype=dtype)
        return buffer.fill_(float("nan")) if buffer.is_floating_point() else buffer

    monkeypatch.setattr(_layout, "allocate", nan_empty)


@pytest.fixture(autouse=True)
def fresh_replays():
    """No test replays a call another test recorded: tests change what the records' keys leave out
    (monkeypatched plans, kernels, hardware)."""
    from tritonconv import _replay

    _replay.clear()
    yield


@pytest.fixture
def device():
    return DEVICE


def poisoned_empty(*shape, **kwargs):
    """A fresh tensor full of NaN, so an output element the kernel forgot to write fails loudly."""
    return torch.full(shape, float("nan"), **kwargs)


class AccessDenial:
    """``deny(folder)`` makes the OS refuse this process what ``chmod 000 folder`` would (anything inside
    it); ``deny(folder, read=True)`` keeps reading and refuses what ``chmod 555`` would (creating,
    writing, renaming or removing inside it); ``undo()`` lifts both. Permission bits do not bind root,
    the user these tests often run as, so the refusal is simulated on the os and io calls instead."""

    def __init__(self):
        self._patch = pytest.MonkeyPatch()

    def __call__(self, folder, *, read=False):
        prefix = os.path.join(os.fspath(folder), "")

        def guard(module, name, refused=lambda *args, **kwargs: True):
            real = getattr(module, name)

            def guarded(path, *args, **kwargs):
                if isinstance(path, (str, os.PathLike)) and os.fspath(path).startswith(prefix) \
                        and refused(*args, **kwargs):
                    raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
                return real(path, *args, **kwargs)
            self._patch.setattr(module, name, guarded)

        for name in ("mkdir", "replace", "rename", "unlink", "rmdir"):
            guard(os, name)
        if not read:
            for module, name in ((os, "stat"), (os, "lstat"), (os, "open"), (io, "open")):
                guard(module, name)
            return
        guard(os, "open", lambda flags, *args, **kwargs: bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)))
        guard(io, "open", lambda mode="r", *args, **kwargs: any(c in mode for c in "wax+"))

    def undo(self):
        self._patch.undo()


@pytest.fixture
def deny_access():
    denial = AccessDenial()
    yield denial
    denial.undo()


RUNNING_AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0  # permission bits do not bind root


@pytest.fixture
def every_warning(recwarn):
    """``recwarn`` without the "default" filter it installs for RuntimeWarning, which shows a message once
    per code line: with it a test could not tell our once-per-file-version reporting from Python's."""
    warnings.simplefilter("always", RuntimeWarning)
    return recwarn
