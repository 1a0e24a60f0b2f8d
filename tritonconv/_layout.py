"""Memory layout and autocast helpers shared by every operator."""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from tritonconv import _launcher
from tritonconv._validation import check_input


def memory_format_of(x: Tensor) -> torch.memory_format:
    """channels_last for an NHWC-strided 4-D tensor (that is not also plain contiguous), else contiguous."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def int32_addressable(t: Tensor) -> Tensor:
    """``t``, or a compact copy in its layout when one image of the view spans 2^31 elements or
    more (a channel slice of a much wider tensor): kernels that address inside an image in int32 read it
    through its strides. The spec's check (``_spec.image_past_int32``) bounds the compact image."""
    if _image_span_fits(t.shape, t.stride()):
        return t
    channels_innermost = t.dim() == 4 and t.stride(1) == 1  # a channel slice of an NHWC tensor stays NHWC
    return t.contiguous(memory_format=torch.channels_last if channels_innermost else torch.contiguous_format)


@functools.lru_cache(maxsize=1024)
def _image_span_fits(shape, strides) -> bool:
    """Whether one image of a view of these sizes and strides spans fewer than 2^31 elements (memoized:
    every launch asks, with the few layouts a model has)."""
    return sum((n - 1) * s for n, s in zip(shape[1:], strides[1:])) < 2**31


def pixel_stride_align(strides, *widths: int) -> int:
    """A power of two (at most 8 elements: 16 bytes of bf16) dividing an NCHW-indexed tensor's batch, row
    and column strides (and the channel ``widths`` a kernel offsets by, e.g. a conv group's), for a
    kernel to promise its compiler (``stride // A * A``); 1 where they are all multiples of 16, which
    Triton's JIT hints itself (a promise it already has costs registers). With channels innermost,
    8-vector accesses of rows of 24 or 120 channels then stay 16 bytes wide."""
    batch, _, row, column = strides
    divisor = math.gcd(batch, row, column, *widths, 16)
    return 1 if divisor == 16 else min(divisor, 8)


def empty(shape, *, device, dtype: torch.dtype, memory_format=torch.contiguous_format) -> Tensor:
    """Every buffer our kernels write (outputs, split-K partials) is allocated here, so that the tests
    can fill them all with NaN (replacing ``allocate``): an element a kernel forgets fails loudly. A call
    being recorded (``_replay``) is told of each buffer."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    strides = dense_strides(shape, memory_format is torch.channels_last)
    watcher = _launcher.recorder()
    if watcher is not None:
        return watcher.allocating(allocate, shape, strides, device=device, dtype=dtype)
    return allocate(shape, strides, device=device, dtype=dtype)


def allocate(shape: tuple, strides: tuple, *, device, dtype: torch.dtype) -> Tensor:
    """An uninitialised buffer (``empty`` and the replays of recorded calls allocate through this)."""
    # empty_strided: about 1 us less per buffer on the CPU than torch.empty(memory_format=...)
    return torch.empty_strided(shape, strides, device=device, dtype=dtype)


@functools.lru_cache(maxsize=1024)
def dense_strides(shape: tuple, channels_last: bool) -> tuple:
    """The strides torch.empty gives a tensor of ``shape``, channels innermost for a 4-D ``channels_last``
    one (memoized: every layer call allocates its outputs with the few shapes a model has)."""
    if channels_last and len(shape) == 4:
        _, channels, height, width = shape  # torch's channels_last strides take zero sizes as they are
        return (height * width * channels, 1, width * channels, channels)
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def empty_like_layout(shape, like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """An uninitialised tensor of ``shape`` in ``like``'s memory layout (outputs follow their input)."""
    return empty(shape, device=like.device, dtype=dtype or like.dtype, memory_format=memory_format_of(like))


def conv_default_init_(fan_in: int, *params: Tensor | None) -> None:
    """nn.Conv2d's default initialisation (kaiming_uniform with a=sqrt(5)): every parameter given (None
    skipped), in order, uniform in +-1/sqrt(fan_in)."""
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        for param in params:
            if param is not None:
                param.uniform_(-bound, bound)


def layer_operands(x: Tensor, in_channels: int, *params, window: tuple[int, int, int] | None = None):
    """A layer's input checked (``_validation.check_input``), then it and the parameters autocast."""
    check_input(x, in_channels, window=window)
    return autocast_operands(x, *params)


def autocast_enabled(x: Tensor) -> bool:
    # is_cuda / is_cpu, not x.device.type (which builds a device object: half this function's time);
    # autocast has no state for other devices (meta raises)
    if x.is_cuda:
        return torch.is_autocast_enabled("cuda")
    return x.is_cpu and torch.is_autocast_enabled("cpu")


def autocast_operands(x: Tensor, *params):
    """Custom ops are invisible to autocast: layers cast here, as autocast would for a conv."""
    if not isinstance(x, Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
    if autocast_enabled(x):
        dtype = torch.get_autocast_dtype(x.device.type)
        return (x.to(dtype), *(t.to(dtype) if t is not None else None for t in params))
    return (x, *params)


def missing_as_empty(grads, like: Tensor) -> tuple:
    """A backward custom op's gradients with each missing one (None) as its own empty tensor: the
    outputs of a custom op must not alias each other, so one shared empty tensor would not do."""
    return tuple(g if g is not None else empty(0, device=like.device, dtype=like.dtype) for g in grads)
