"""What every operator spec shares: the dtype names it accepts, its NCHW input and output shapes, and
its tuning key."""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields

import torch

from tritonconv._validation import check_positive_int

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}


def batch_bucket(batch: int) -> int:
    """Batch sizes share a tuning entry per power-of-two bucket (a new batch size does not re-tune)."""
    return 1 << max(batch - 1, 0).bit_length()


def check_dtype_name(dtype: str) -> None:
    if dtype not in DTYPES:
        raise TypeError(f"dtype={dtype!r} is not supported; expected one of {tuple(DTYPES)}")


@dataclass(frozen=True)
class ConvShape:
    """The fields every spec starts with, in this order; its hyperparameters follow them."""

    batch: int
    in_channels: int
    out_channels: int
    height: int
    width: int

    def validate_shape(self) -> None:
        """batch >= 0, height and width >= 1 (the channels are checked with the hyperparameters)."""
        check_positive_int("batch", self.batch, minimum=0)
        check_positive_int("height", self.height)
        check_positive_int("width", self.width)


class ConvSpecShapes(ConvShape):
    """Base of the frozen spec dataclasses of the Triton operators: ``ConvShape``'s fields, then the
    operator's, then ``dtype`` and ``channels_last``; properties ``out_height``, ``out_width``.

    The tuning key is generated from the fields: every field, in declaration order, but those a spec
    declares in ``NOT_TUNED`` (they change addresses, not which tiles are fastest); a field named in
    ``TUNING_BUCKETS`` is keyed on its bucket (the batch: a new batch size does not re-tune).
    """

    NOT_TUNED: tuple = ()
    TUNING_BUCKETS: dict = {"batch": batch_bucket}

    def tuning_key(self) -> str:
        """``name=value`` of every tuned field, comma-separated (booleans as 0/1)."""
        parts = []
        for field in fields(self):
            if field.name in self.NOT_TUNED:
                continue
            value = getattr(self, field.name)
            bucket = self.TUNING_BUCKETS.get(field.name)
            value = bucket(value) if bucket else int(value) if isinstance(value, bool) else value
            parts.append(f"{field.name}={value}")
        return ",".join(parts)

    def validate_shape(self) -> None:
        super().validate_shape()
        check_dtype_name(self.dtype)

    @functools.cached_property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @functools.cached_property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.in_channels, self.height, self.width)

    @functools.cached_property
    def output_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.out_channels, self.out_height, self.out_width)


INT32_ELEMENTS = 2**31


def image_past_int32(spec, out_channels: int | None = None) -> str | None:
    """Why kernels that address inside one image in int32 (only the image's base is int64) cannot take
    ``spec``: an input or output image (of ``out_channels``, default the spec's) of 2^31 elements or
    more; None when both fit. Launchers read an input view whose image spans more through a compact
    copy (``_layout.int32_addressable``)."""
    out_channels = spec.out_channels if out_channels is None else out_channels
    image = max(spec.in_channels * spec.height * spec.width, out_channels * spec.out_height * spec.out_width)
    if image >= INT32_ELEMENTS:
        return f"one image holds {image} elements, past 2^31: the kernels address inside an image in int32"
    return None


def output_size(size: int, kernel_size: int, stride: int, padding: int, dilation: int = 1) -> int:
    """torch's conv output size along one axis."""
    return (size + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1


class WindowedSpecShapes(ConvSpecShapes):
    """A ``ConvSpecShapes`` whose ``kernel_size`` window slides with its ``stride``, ``padding`` and
    ``dilation`` fields: ``out_height`` and ``out_width`` follow from them."""

    @functools.cached_property
    def out_height(self) -> int:
        return output_size(self.height, self.kernel_size, self.stride, self.padding, self.dilation)

    @functools.cached_property
    def out_width(self) -> int:
        return output_size(self.width, self.kernel_size, self.stride, self.padding, self.dilation)


_SPECS_KEPT = 4096


def memoized_from_tensors(build):
    """``from_tensors`` as a classmethod memoized on what it reads of the tensors (shape, strides,
    dtype, device) and on the other arguments: every layer call builds its spec, and validating it
    again costs tens of microseconds. A call that raises is not stored, so it raises every time.
    Sizes torch.compile traces symbolically are not hashable: those calls are built each time."""
    specs: dict = {}

    @functools.wraps(build)
    def from_tensors(cls, *args, **kwargs):
        # one flat tuple, built inline (a key function per argument cost about 0.7 us more per call)
        key = [cls]
        for value in args:
            if isinstance(value, torch.Tensor):
                key += (value.shape, value.stride(), value.dtype, value.device)
            else:
                key += (type(value), value)
        for name, value in kwargs.items():
            key += (name, type(value), value)
        key = tuple(key)
        try:
            spec = specs.get(key)
        except TypeError:  # symbolic sizes
            return build(cls, *args, **kwargs)
        if spec is None:
            spec = build(cls, *args, **kwargs)
            if len(specs) >= _SPECS_KEPT:
                specs.clear()
            specs[key] = spec
        return spec

    return classmethod(from_tensors)
