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


def check_input(x, in_channels: int, *, window: tuple[int, int, int] | None = None) -> torch.Tensor:
    """A layer's input: a 4-D floating tensor with ``in_channels`` channels and a non-empty image, at
    least as large as the layer's ``window`` = (kernel_size, padding, dilation) once padded."""
    check_tensor("input", x, rank=4)
    if x.shape[1] != in_channels:
        raise ValueError(f"input has {x.shape[1]} channels (shape {tuple(x.shape)}); "
                         f"expected in_channels={in_channels}")
    height, width = x.shape[2], x.shape[3]
    if height == 0 or width == 0:
        raise ValueError(f"input has spatial size {height} x {width} (shape {tuple(x.shape)}); expected at least 1 x 1")
    if window is not None:
        kernel_size, padding, dilation = window
        extent = dilation * (kernel_size - 1) + 1
        if min(height, width) + 2 * padding < extent:
            raise ValueError(f"input has spatial size {height} x {width}, smaller than the {extent} x {extent} window "
                             f"of kernel_size={kernel_size}, dilation={dilation} with padding={padding}")
    return x


def check_int_choice(name: str, value, choices: tuple[int, ...]) -> int:
    """An int (not a bool or a float that happens to be equal) among ``choices``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}={value!r} must be an int, one of {choices}")
    if value not in choices:
        raise ValueError(f"{name}={value!r} must be one of {choices}")
    return value


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}={value!r} must be a bool")
    return value
