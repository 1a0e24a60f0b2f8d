"""Every environment variable tritonconv reads, in one place.

| variable | meaning | default |
|---|---|---|
| TRITONCONV_BACKEND | force every dispatch: ``auto``, ``triton`` or ``fallback`` | ``auto`` |
| TRITONCONV_TUNING | ``first-call``: tune an untuned shape on a GPU at its first call (``off``: never) | ``off`` |
| TRITONCONV_CACHE_DIR | the folder of ``tuning.json`` | ``$XDG_CACHE_HOME/tritonconv`` or ``~/.cache/tritonconv`` |
| TRITON_INTERPRET | Triton's own switch: ``1`` runs kernels on the CPU through its interpreter | unset |
| TRITONCONV_COMMIT | the commit perf records where there is no ``.git`` (a GPU machine's copy) | ``git rev-parse`` |
| TRITONCONV_DIRECT_LAUNCH | ``0``: every launch through Triton's own (``_launcher``; read at import) | ``1`` |
| TRITONCONV_REPLAY | ``0``: no eager call replays an earlier one's launches (``_replay``; read at import) | ``1`` |
| WORLD_SIZE, LOCAL_RANK | set by torchrun: ``python -m autotune`` joins the ranks and shares the work | unset |
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

# The dispatcher reads its variables on every layer call, and ``os.environ.get`` encodes the name and
# decodes the value each time (about 0.6 us, several times per call). On POSIX CPython, os.environ keeps
# the encoded mapping it reads and updates on every write (``_data``): a lookup there answers exactly
# what os.environ.get would, in a tenth of the time. Elsewhere (or should os.environ be replaced by
# another mapping), os.environ.get itself.
_ENVIRON = os.environ
_ENCODED = getattr(os.environ, "_data", None) if os.name == "posix" else None


def _get(name: str, default: str | None) -> str | None:
    """``os.environ.get(name, default)``."""
    if _ENCODED is None or os.environ is not _ENVIRON:
        return os.environ.get(name, default)
    raw = _ENCODED.get(_encoded(name))
    return default if raw is None else _decoded(raw)


@functools.lru_cache(maxsize=64)
def _encoded(name: str) -> bytes:
    return os.fsencode(name)


@functools.lru_cache(maxsize=256)
def _decoded(raw: bytes) -> str:
    return os.fsdecode(raw)


BACKEND_CHOICES = ("auto", "triton", "fallback")


def backend_override() -> str:
    """The backend forced by TRITONCONV_BACKEND, validated."""
    return _backend(_get("TRITONCONV_BACKEND", "auto"))


@functools.lru_cache(maxsize=16)
def _backend(raw: str) -> str:  # an invalid value raises, and is not cached
    value = raw.strip().lower() or "auto"
    if value not in BACKEND_CHOICES:
        raise ValueError(
            f"TRITONCONV_BACKEND={value!r} is not a backend; expected one of {BACKEND_CHOICES}"
        )
    return value


TUNING_CHOICES = ("off", "first-call")


def tuning_mode() -> str:
    """When shapes are tuned without ``python -m autotune``: TRITONCONV_TUNING, validated."""
    return _tuning(_get("TRITONCONV_TUNING", "off"))


@functools.lru_cache(maxsize=16)
def _tuning(raw: str) -> str:  # an invalid value raises, and is not cached
    value = raw.strip().lower() or "off"
    if value not in TUNING_CHOICES:
        raise ValueError(f"TRITONCONV_TUNING={value!r} is not a tuning mode; expected one of {TUNING_CHOICES}")
    return value


def cache_dir() -> Path:
    """Where the persistent tuning cache lives (read on every call: the variables may change)."""
    return _cache_dir(_get("TRITONCONV_CACHE_DIR", None), _get("XDG_CACHE_HOME", None))


@functools.lru_cache(maxsize=8)
def _cache_dir(explicit: str | None, xdg: str | None) -> Path:
    # Building paths is slow next to a kernel launch; the dispatcher asks on every call.
    if explicit:
        return Path(explicit).expanduser()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "tritonconv"


def triton_interpret() -> bool:
    """True when Triton kernels run through the CPU interpreter."""
    return _get("TRITON_INTERPRET", "0") not in ("", "0")


def commit_override() -> str | None:
    """The commit TRITONCONV_COMMIT names, if set (results are recorded under it instead of git's)."""
    return _get("TRITONCONV_COMMIT", "").strip() or None


def direct_launch() -> bool:
    """Whether ``_launcher`` calls compiled kernels directly on a GPU (TRITONCONV_DIRECT_LAUNCH, not 0)."""
    return _switch("TRITONCONV_DIRECT_LAUNCH")


def replay() -> bool:
    """Whether eager calls replay the launches of an earlier call of the same key (``_replay``;
    TRITONCONV_REPLAY, not 0)."""
    return _switch("TRITONCONV_REPLAY")


def _switch(name: str) -> bool:
    """An on/off variable, on unless ``0``."""
    value = _get(name, "1").strip().lower() or "1"
    if value not in ("0", "1"):
        raise ValueError(f"{name}={value!r}; expected 0 or 1")
    return value == "1"


def launched_world_size() -> int:
    """How many processes torchrun started (WORLD_SIZE; 1 when not under a launcher)."""
    return int(_get("WORLD_SIZE", "1") or 1)


def local_rank() -> int:
    """This process's GPU on its node under torchrun (LOCAL_RANK; 0 when not under a launcher)."""
    return int(_get("LOCAL_RANK", "0") or 0)
