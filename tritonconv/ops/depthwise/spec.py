"""DepthwiseSpec: one description of a depthwise conv call (standalone, or the Ghost module's cheap
operation), shared by the layer, dispatcher, tuner, perf suite and tests."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from tritonconv._spec import WindowedSpecShapes, image_past_int32, memoized_from_tensors, output_size
from tritonconv._validation import check_positive_int, check_same, check_shape, check_tensor, dtype_name
from tritonconv.accounting import Cost

# Activation name -> the constexpr code the kernels branch on.
ACTIVATIONS = {"none": 0, "relu": 1, "relu6": 2}


def normalize_activation(name: str, value) -> str:
    """None, "relu" or "relu6" (the layer arguments) -> the op's string ("none" for None)."""
    if value is None:
        return "none"
    if not isinstance(value, str) or value not in ACTIVATIONS:
        raise ValueError(f"{name}={value!r} is not an activation; expected None, 'relu' or 'relu6'")
    return value


def default_padding(kernel_size: int, dilation: int) -> int:
    return dilation * (kernel_size // 2)


def validate_window(kernel_size, stride, padding, dilation, *, kernel_name: str = "kernel_size") -> None:
    """The sliding-window hyperparameters every depthwise kernel accepts."""
    check_positive_int(kernel_name, kernel_size)
    if kernel_size % 2 == 0:
        raise ValueError(f"{kernel_name}={kernel_size} must be odd: the window is centred on its output pixel")
    check_positive_int("stride", stride)
    check_positive_int("padding", padding, minimum=0)
    check_positive_int("dilation", dilation)


def check_spatial(height: int, width: int, kernel_size: int, stride: int, padding: int, dilation: int) -> None:
    if min(output_size(height, kernel_size, stride, padding, dilation),
           output_size(width, kernel_size, stride, padding, dilation)) < 1:
        raise ValueError(f"input spatial size {(height, width)} is smaller than the dilated window "
                         f"(kernel_size={kernel_size}, dilation={dilation}, padding={padding})")


MAX_GRID_IMAGES = 65535  # CUDA's limit on grid axes 1 and 2: the batch is axis 2 of the pixel kernels


def window_unsupported(spec) -> str | None:
    """The window the depthwise kernels (and the fused dwsep kernels built on them) cannot take."""
    return f"stride={spec.stride}; the kernels take stride 1 or 2" if spec.stride not in (1, 2) else None


def triton_unsupported(spec: "DepthwiseSpec") -> str | None:
    """What the Triton depthwise kernels cannot take: their window, more images than a grid axis holds,
    an image past int32 addressing."""
    if spec.batch > MAX_GRID_IMAGES:
        return f"batch={spec.batch}; the kernels' grid holds at most {MAX_GRID_IMAGES} images"
    return window_unsupported(spec) or image_past_int32(spec, spec.total_out_channels)


def layout_of(x: torch.Tensor) -> bool:
    """True for a channels_last (NHWC-strided) 4-d tensor."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


@dataclass(frozen=True)
class DepthwiseSpec(WindowedSpecShapes):
    """Depthwise conv: output channel o reads input channel ``o // multiplier`` (torch's groups=C order).

    ``out_channels`` may be less than ``in_channels * multiplier`` (the Ghost module keeps only the
    first maps). ``concat_input``: the output is ``cat([input, depthwise(input)])`` written by one
    launch (the Ghost module); it needs a window that keeps the spatial size.
    """

    kernel_size: int = 3
    stride: int = 1
    padding: int = 1
    dilation: int = 1
    multiplier: int = 1
    bias: bool = True
    activation: str = "none"
    dtype: str = "float32"
    channels_last: bool = False
    concat_input: bool = False

    def __post_init__(self):
        self.validate_shape()
        check_positive_int("in_channels", self.in_channels)
        check_positive_int("multiplier", self.multiplier)
        check_positive_int("out_channels", self.out_channels)
        if self.out_channels > self.in_channels * self.multiplier:
            raise ValueError(f"out_channels={self.out_channels} must be at most in_channels * multiplier = "
                             f"{self.in_channels} * {self.multiplier}")
        validate_window(self.kernel_size, self.stride, self.padding, self.dilation)
        check_spatial(self.height, self.width, self.kernel_size, self.stride, self.padding, self.dilation)
        normalize_activation("activation", self.activation)
        if self.concat_input and (self.out_height, self.out_width) != (self.height, self.width):
            raise ValueError(f"concat_input=True needs an output as large as the input, got "
                             f"{(self.out_height, self.out_width)} from {(self.height, self.width)}")

    @functools.cached_property
    def total_out_channels(self) -> int:
        """Channels of the op's output: the depthwise maps, after the input's when concatenated."""
        return self.out_channels + (self.in_channels if self.concat_input else 0)

    @functools.cached_property
    def output_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.total_out_channels, self.out_height, self.out_width)

    @functools.cached_property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, 1, self.kernel_size, self.kernel_size)

    def parameter_count(self) -> int:
        return self.out_channels * (self.kernel_size**2 + int(self.bias))

    def cost(self) -> Cost:
        pixels = self.batch * self.out_height * self.out_width
        macs = pixels * self.out_channels * self.kernel_size**2
        params = self.parameter_count()
        elements = self.batch * self.in_channels * self.height * self.width + pixels * self.total_out_channels
        return Cost(macs=macs, bytes=(elements + params) * self.torch_dtype.itemsize)

    def unfused_cost(self) -> Cost | None:
        """With ``concat_input`` (the Ghost module), the unfused form: the depthwise conv writes its maps,
        then ``torch.cat`` reads the input and the maps back and writes both. None without it (nothing is
        fused)."""
        if not self.concat_input:
            return None
        x = self.batch * self.in_channels * self.height * self.width
        maps = self.batch * self.out_channels * self.out_height * self.out_width
        fused = self.cost()
        return Cost(macs=fused.macs, bytes=fused.bytes + (x + 2 * maps) * self.torch_dtype.itemsize)

    def describe(self) -> str:
        cat = " +input" if self.concat_input else ""
        return (f"dw {self.in_channels}->{self.out_channels}{cat} k{self.kernel_size} s{self.stride} "
                f"d{self.dilation} {self.height}x{self.width} b{self.batch}")

    @memoized_from_tensors
    def from_tensors(cls, x, weight, bias, *, stride: int, padding: int, dilation: int, multiplier: int,
                     activation: str, concat_input: bool = False) -> "DepthwiseSpec":
        """Validate a call's tensors against each other and describe it."""
        check_tensor("input", x, rank=4)
        check_tensor("weight", weight, rank=4)
        check_same("weight", weight, x, "input")
        out_channels, one, k, k2 = weight.shape
        if one != 1 or k != k2:
            raise ValueError(f"weight has shape {tuple(weight.shape)}; expected [out_channels, 1, k, k]")
        in_channels = x.shape[1]
        check_positive_int("multiplier", multiplier)
        # The Ghost module keeps only the first maps; a plain depthwise conv has all of them.
        fits = out_channels <= in_channels * multiplier if concat_input else out_channels == in_channels * multiplier
        if not fits:
            raise ValueError(f"input has {in_channels} channels but weight has shape {tuple(weight.shape)}; with "
                             f"multiplier={multiplier} expected {in_channels * multiplier} filters")
        if bias is not None:
            check_tensor("bias", bias, rank=1)
            check_shape("bias", bias, (out_channels,))
            check_same("bias", bias, x, "input")
        validate_window(k, stride, padding, dilation)
        return cls(batch=x.shape[0], in_channels=in_channels, out_channels=out_channels, height=x.shape[2],
                   width=x.shape[3], kernel_size=k, stride=stride, padding=padding, dilation=dilation,
                   multiplier=multiplier, bias=bias is not None,
                   activation=normalize_activation("activation", activation),
                   dtype=dtype_name(x.dtype), channels_last=layout_of(x), concat_input=concat_input)
