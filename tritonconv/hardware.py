"""Hardware and software identity: what the tuning cache is keyed on and what kernels can run on."""

from __future__ import annotations

import functools

import torch
import triton

from tritonconv import env


def triton_can_run(device: torch.device, dtype: str) -> tuple[bool, str]:
    """Whether our Triton kernels can run on ``dtype`` tensors of ``device``, and why not."""
    if device.type == "cuda":
        return True, "CUDA device"
    if device.type == "cpu" and env.triton_interpret() and dtype == "bfloat16":
        # Its bf16 arithmetic and casts are wrong (relative errors up to 1e10): never a silent wrong answer.
        return False, "CPU bfloat16 tensors: Triton's interpreter computes bfloat16 wrongly, so torch computes them"
    if device.type == "cpu" and env.triton_interpret():
        return True, "CPU tensors under TRITON_INTERPRET=1"
    if device.type == "cpu":
        return False, "CPU tensors need TRITON_INTERPRET=1 for the Triton kernels"
    return False, f"no Triton kernels for device type {device.type!r}"


@functools.cache
def device_name(device_index: int | None = None) -> str:
    """A stable name for the device a measurement was taken on."""
    if env.triton_interpret() or not torch.cuda.is_available():
        return "triton-interpreter-cpu"
    return torch.cuda.get_device_name(device_index)


def device_name_of(device: torch.device) -> str:
    if env.triton_interpret():
        return device_name(None)
    if device.type == "cuda":
        return device_name(device.index if device.index is not None else torch.cuda.current_device())
    return "cpu"


def versions() -> dict[str, str]:
    return {"torch": torch.__version__, "triton": triton.__version__}
