"""Input checks shared by every layer: each error names the argument, the value and what was expected."""

from __future__ import annotations

import torch

KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_positive_int(name: str, value, *, minimum: int = 1) -> int:
    if isinstance(value, torch.SymInt):
        # A size traced symbolically by torch.compile (dynamic shapes): the real call checks its value.
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an int >= {minimum}")
    return value


def check_tensor(name: str, tensor, *, rank: int, dtypes=KERNEL_DTYPES) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() != rank:
        raise ValueError(f"{name} must have {rank} dimensions, got shape {tuple(tensor.shape)}")
    if tensor.dtype not in dtypes:
        expected = ", ".join(dtype_name(d) for d in dtypes)
        raise TypeError(f"{name} has dtype {dtype_name(tensor.dtype)}; expected one of {expected}")
    return tensor


def check_shape(name: str, tensor: torch.Tensor, expected: tuple[int, ...]) -> None:
    if tuple(tensor.shape) != tuple(expected):
        raise ValueError(f"{name} has shape {tuple(tensor.shape)}; expected {tuple(expected)}")


def check_same(name: str, tensor: torch.Tensor, reference: torch.Tensor, reference_name: str) -> None:
    if tensor.dtype != reference.dtype:
        raise TypeError(
            f"{name} has dtype {dtype_name(tensor.dtype)} but {reference_name} has "
            f"{dtype_name(reference.dtype)}; they must match"
        )
    if tensor.device != reference.device:
        raise ValueError(
            f"{name} is on {tensor.device} but {reference_name} is on {reference.device}; "
            "they must be on the same device"
        )
