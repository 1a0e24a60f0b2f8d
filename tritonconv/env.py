"""Every environment variable tritonconv reads, in one place.

| variable | meaning | default |
|---|---|---|
| TRITONCONV_BACKEND | force every dispatch: ``auto``, ``triton`` or ``fallback`` | ``auto`` |
| TRITONCONV_CACHE_DIR | folder holding the tuning cache ``tuning.json`` | ``$XDG_CACHE_HOME/tritonconv`` or ``~/.cache/tritonconv`` |
| TRITON_INTERPRET | Triton's own switch: ``1`` runs kernels on the CPU through its interpreter | unset |
"""

from __future__ import annotations

import os
from pathlib import Path

BACKEND_CHOICES = ("auto", "triton", "fallback")


def backend_override() -> str:
    """The backend forced by TRITONCONV_BACKEND, validated."""
    value = os.environ.get("TRITONCONV_BACKEND", "auto").strip().lower() or "auto"
    if value not in BACKEND_CHOICES:
        raise ValueError(
            f"TRITONCONV_BACKEND={value!r} is not a backend; expected one of {BACKEND_CHOICES}"
        )
    return value


def cache_dir() -> Path:
    """Where the persistent tuning cache lives."""
    explicit = os.environ.get("TRITONCONV_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "tritonconv"


def triton_interpret() -> bool:
    """True when Triton kernels run through the CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
